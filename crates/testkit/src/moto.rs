//! moto in server mode: installed once (pinned, in a virtualenv under the user's cache), started
//! on a free loopback port, stopped when the handle is dropped — and, since it watches its
//! standard input, also when the process that started it dies (a SIGKILLed test, Ctrl-C).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

/// The pinned moto version.
pub const MOTO_VERSION: &str = "5.2.5";

/// Starts moto's WSGI app with werkzeug on 127.0.0.1:0, prints the port, serves until stdin
/// closes.
const LAUNCHER: &str = r#"
import os, sys, threading
from werkzeug.serving import make_server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
app = DomainDispatcherApplication(create_backend_app)
srv = make_server("127.0.0.1", 0, app, threaded=True)
print(srv.server_port, flush=True)
def watch():
    sys.stdin.read()
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
srv.serve_forever()
"#;

/// Where the virtualenv lives: `$KEYROTOR_MOTO_VENV`, else `~/.cache/keyrotor/moto-<version>`.
pub fn venv_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KEYROTOR_MOTO_VENV") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    home.join(".cache")
        .join("keyrotor")
        .join(format!("moto-{MOTO_VERSION}"))
}

fn python(venv: &Path) -> PathBuf {
    venv.join("bin").join("python")
}

fn works(py: &Path) -> bool {
    Command::new(py)
        .args([
            "-c",
            &format!("import moto, werkzeug, flask; assert moto.__version__ == '{MOTO_VERSION}'"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs `moto[server]==MOTO_VERSION` into the virtualenv if it is not there yet (one
/// installer at a time, across processes). Returns the virtualenv's python.
pub fn ensure_installed() -> Result<PathBuf> {
    let venv = venv_dir();
    let py = python(&venv);
    if works(&py) {
        return Ok(py);
    }
    let parent = venv
        .parent()
        .context("the moto virtualenv has no parent folder")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let lock = std::fs::File::create(parent.join(format!(".moto-{MOTO_VERSION}.lock")))?;
    lock.lock().context("locking the moto install")?;
    if works(&py) {
        return Ok(py);
    }
    eprintln!(
        "keyrotor-testkit: installing moto[server]=={MOTO_VERSION} into {} (once)",
        venv.display()
    );
    let python3 = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&python3)
        .args(["-m", "venv", "--clear"])
        .arg(&venv)
        .status()
        .with_context(|| format!("running {python3} -m venv (is Python 3 installed?)"))?;
    if !status.success() {
        bail!("{python3} -m venv {} failed", venv.display());
    }
    let status = Command::new(&py)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg(format!("moto[server]=={MOTO_VERSION}"))
        .stdout(Stdio::null())
        .status()
        .context("running pip")?;
    if !status.success() || !works(&py) {
        bail!("installing moto[server]=={MOTO_VERSION} with pip failed");
    }
    Ok(py)
}

/// A running moto server. Dropping it stops the server.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl Moto {
    /// Installs moto if needed and starts a fresh server on a free loopback port.
    pub fn start() -> Result<Self> {
        let py = ensure_installed()?;
        let mut child = Command::new(py)
            .args(["-c", LAUNCHER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting moto")?;
        let stdout = child.stdout.take().context("moto's stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading moto's port")?;
        let port: u16 = match line.trim().parse() {
            Ok(p) => p,
            Err(_) => {
                let _ = child.kill();
                bail!("moto did not start (it printed {line:?} instead of its port)");
            }
        };
        Ok(Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        })
    }

    /// `POST /moto-api/reset`: every service back to empty.
    pub async fn reset(&self) -> Result<()> {
        let r = reqwest::Client::new()
            .post(format!("{}/moto-api/reset", self.endpoint))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("moto reset answered {}", r.status());
        }
        Ok(())
    }

    /// The environment a process needs to talk to this moto (dummy credentials, a region).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// An SDK config pointing at this moto, with dummy credentials.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_credential_types::Credentials::new(
                "testing", "testing", None, None, "moto",
            ))
            .load()
            .await
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
