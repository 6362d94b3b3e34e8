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

/// Loaded before moto's launcher, always: IAM users' permissions boundaries, which moto 5.2.5
/// does not implement (it has no `PutUserPermissionsBoundary` and `GetUser` never answers a
/// `PermissionsBoundary`; roles' boundaries it has). As AWS: `PutUserPermissionsBoundary` sets
/// it (an ARN that is not a policy's is `InvalidParameterValue`, as moto answers for a role; an
/// unknown user `NoSuchEntity`),
/// `DeleteUserPermissionsBoundary` removes it, and `GetUser` answers it as
/// `PermissionsBoundary` {`PermissionsBoundaryType` `PermissionsBoundaryPolicy`,
/// `PermissionsBoundaryArn`} when there is one.
pub const USER_BOUNDARY: &str = r#"
from moto.iam import models as _iam_models
from moto.iam.responses import IamResponse as _IamB
from moto.core.responses import EmptyResult as _Empty
from moto.core.serialize import return_if_not_empty as _if_set

def _user_boundary(self):
    arn = getattr(self, "_keyrotor_boundary", None)
    if not arn:
        return None
    return {"PermissionsBoundaryType": "PermissionsBoundaryPolicy", "PermissionsBoundaryArn": arn}
_iam_models.User.permissions_boundary = property(_user_boundary)
_IamB.RESPONSE_KEY_PATH_TO_TRANSFORMER["GetUserResponse.User.PermissionsBoundary"] = _if_set

def _put_user_boundary(self):
    arn = self._get_param("PermissionsBoundary")
    name = self._get_param("UserName")
    user = self.backend.get_user(name)
    if not arn or not self.backend.policy_arn_regex.match(arn):
        raise _iam_models.RESTError(
            "InvalidParameterValue",
            f"Value ({arn}) for parameter PermissionsBoundary is invalid.")
    user._keyrotor_boundary = arn
    return _Empty()
_IamB.put_user_permissions_boundary = _put_user_boundary

def _delete_user_boundary(self):
    user = self.backend.get_user(self._get_param("UserName"))
    user._keyrotor_boundary = None
    return _Empty()
_IamB.delete_user_permissions_boundary = _delete_user_boundary
"#;

/// Loaded before moto's launcher by [`Moto::start_authorizing_resources`]. moto 5.2.5 evaluates
/// IAM policies with its own engine once enforcement is on (`/moto-api/reset-auth`), but it
/// authorizes IAM-user, Secrets Manager and SSM requests against the resource `"*"` (only IAM
/// roles and SQS queues get their ARN), and it turns a policy's `?` wildcard into a regex
/// quantifier (`-??????` raises). So a policy scoped to one user or one secret would deny
/// everything. These patches give moto's evaluator the ARN AWS authorizes against, and IAM's
/// wildcard semantics (`*` any run, `?` one character, the rest literal):
///
/// - IAM: the user named by `UserName`, else the owner of `AccessKeyId` (its real ARN, path
///   included);
/// - Secrets Manager: the secret's full ARN; a secret that does not exist is authorized as
///   `…:secret:NAME` (no random suffix, so `NAME-??????` does not match it); `CreateSecret` as
///   `…:secret:NAME-` and six characters, the ARN it will get;
/// - SSM: `…:parameter/NAME` (`…:parameterNAME` for names that start with `/`);
/// - Step Functions: the execution's ARN (`executionArn`), else the state machine's.
///
/// and a refusal comes back as AWS sends it: `AccessDenied` in IAM's and STS's query-protocol
/// `<ErrorResponse><Error>` (moto wraps it in EC2's `<Errors>`, which the SDK cannot parse), or
/// `AccessDeniedException` in JSON for Secrets Manager and SSM, with AWS's message ("User: … is
/// not authorized to perform: … on resource: … because no identity-based policy allows …").
///
/// The decision itself is moto's own evaluator's.
pub const RESOURCE_AUTHORIZATION: &str = r#"
import re
from moto.iam import access_control as _ac
from moto.iam.responses import IamResponse as _Iam
from moto.secretsmanager.responses import SecretsManagerResponse as _Sm
from moto.ssm.responses import SimpleSystemManagerResponse as _Ssm

def _glob(pattern, string):
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, string, re.DOTALL)
_ac.IAMPolicyStatement._match = staticmethod(_glob)

_iam_roles = _Iam._determine_resource
def _iam_resource(self):
    found = _iam_roles(self)
    if found != "*":
        return found
    try:
        user = self._get_param("UserName")
        key = self._get_param("AccessKeyId")
        if not user and key:
            owner = self.backend.get_user_from_access_key_id(key)
            user = owner.name if owner else None
        if not user:
            return "*"
        try:
            return self.backend.get_user(user).arn
        except Exception:
            return f"arn:aws:iam::{self.current_account}:user/{user}"
    except Exception:
        return "*"
_Iam._determine_resource = _iam_resource

def _sm_resource(self):
    try:
        prefix = f"arn:aws:secretsmanager:{self.region}:{self.current_account}:secret:"
        sid = self._get_param("SecretId")
        if sid:
            found = self.backend.secrets.get(sid)
            if found is not None:
                return found.arn
            return sid if sid.startswith("arn:") else prefix + sid
        name = self._get_param("Name")
        if name:
            return prefix + name + "-Ab1Cd2"
        return "*"
    except Exception:
        return "*"
_Sm._determine_resource = _sm_resource

def _ssm_resource(self):
    try:
        name = self._get_param("Name")
        if not name:
            return "*"
        if name.startswith("arn:"):
            return name
        sep = "" if name.startswith("/") else "/"
        return f"arn:aws:ssm:{self.region}:{self.current_account}:parameter{sep}{name}"
    except Exception:
        return "*"
_Ssm._determine_resource = _ssm_resource

from moto.stepfunctions.responses import StepFunctionResponse as _Sfn
def _sfn_resource(self):
    try:
        return self._get_param("executionArn") or self._get_param("stateMachineArn") or "*"
    except Exception:
        return "*"
_Sfn._determine_resource = _sfn_resource

from xml.sax.saxutils import escape as _escape
from moto.core.exceptions import JsonRESTError as _JsonError, _RESTError

class _QueryAccessDenied(_RESTError):
    code = 403
    def __init__(self, message):
        super().__init__("AccessDenied", message)
        self.description = (
            '<ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/"><Error>'
            f"<Type>Sender</Type><Code>AccessDenied</Code><Message>{_escape(message)}</Message>"
            "</Error><RequestId>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</RequestId></ErrorResponse>")

class _JsonAccessDenied(_JsonError):
    code = 400
    def __init__(self, message):
        super().__init__("AccessDeniedException", message)

_checked = _ac.IAMRequest.check_action_permitted
def _check(self, resource):
    self._keyrotor_resource = resource
    return _checked(self, resource)
_ac.IAMRequest.check_action_permitted = _check

def _denied(self):
    message = (f"User: {self._access_key.arn} is not authorized to perform: {self._action} "
               f"on resource: {getattr(self, '_keyrotor_resource', '*')} because no "
               f"identity-based policy allows the {self._action} action")
    if self._service in ("iam", "sts"):
        raise _QueryAccessDenied(message)
    raise _JsonAccessDenied(message)
_ac.IAMRequest._raise_access_denied = _denied
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
        "keyrotor-standins: installing moto[server]=={MOTO_VERSION} into {} (once)",
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
        Self::spawn(format!("{USER_BOUNDARY}\n{LAUNCHER}"))
    }

    /// Like [`Moto::start`], with moto's IAM authorization made resource-aware (see
    /// [`RESOURCE_AUTHORIZATION`]). Enforcement is still off until [`Moto::enforce_iam`].
    pub fn start_authorizing_resources() -> Result<Self> {
        Self::spawn(format!(
            "{USER_BOUNDARY}\n{RESOURCE_AUTHORIZATION}\n{LAUNCHER}"
        ))
    }

    fn spawn(script: String) -> Result<Self> {
        let py = ensure_installed()?;
        let mut child = Command::new(py)
            .args(["-c", &script])
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

    /// Switches moto's IAM enforcement on (every request is then authenticated and authorized
    /// against the caller's policies) or off (`POST /moto-api/reset-auth`).
    pub async fn enforce_iam(&self, on: bool) -> Result<()> {
        let r = reqwest::Client::new()
            .post(format!("{}/moto-api/reset-auth", self.endpoint))
            .body(if on { "0" } else { "inf" })
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("moto reset-auth answered {}", r.status());
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
