//! Running the binary: [`Run`] (the one way every test starts `keyrotor`) and [`Output`].

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::TestEnv;

/// The longest a run may take before the test gives up on it (a hang is a failure of its own).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// The subcommands that take the env's config (`--config` is added after the subcommand).
const WITH_CONFIG: [&str; 3] = ["rotate", "plan", "status"];

/// What one run of the binary did.
#[derive(Debug, Clone)]
pub struct Output {
    /// The arguments, `--config` included.
    pub args: Vec<String>,
    /// The exit code (`-1` when the test's kill ended it).
    pub code: i32,
    /// Whether the test's kill ended it (SIGKILL: nothing of the child's cleanup ran).
    pub killed: bool,
    /// Whether the log line [`Run::kill_after_line`] waited for came.
    pub triggered: bool,
    /// stdout.
    pub stdout: String,
    /// stderr: the error lines and the trace-level logs.
    pub stderr: String,
    /// From start to exit.
    pub elapsed: Duration,
}

impl Output {
    /// stdout as the JSON document `--output json` prints (panics if it is not).
    pub fn json(&self) -> Value {
        self.try_json().unwrap_or_else(|| {
            panic!(
                "stdout of {:?} is not JSON:\n{}\nstderr (tail):\n{}",
                self.args,
                self.stdout,
                tail(&self.stderr)
            )
        })
    }

    /// stdout as JSON, when it is.
    pub fn try_json(&self) -> Option<Value> {
        serde_json::from_str(&self.stdout).ok()
    }

    /// The first target's report, when stdout is JSON.
    pub fn target(&self) -> Option<Value> {
        self.try_json()?["targets"].get(0).cloned()
    }

    /// The first target's `outcome`, or `-`.
    pub fn outcome(&self) -> String {
        self.target()
            .and_then(|t| t["outcome"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "-".into())
    }

    /// The first target's `failed_step`.
    pub fn failed_step(&self) -> Option<String> {
        self.target()?["failed_step"].as_str().map(str::to_owned)
    }

    /// The binary's own error lines on stderr (`error: …`), the logs aside.
    pub fn errors(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("error:") || l.starts_with("Error:"))
            .collect()
    }

    /// For assertion messages: the command, the exit code, the time, stdout and the end of
    /// stderr.
    pub fn show(&self) -> String {
        format!(
            "keyrotor {:?} exited {}{} after {:.1} s\n--- stdout\n{}\n--- stderr (last lines)\n{}",
            self.args,
            self.code,
            if self.killed { " (killed)" } else { "" },
            self.elapsed.as_secs_f64(),
            self.stdout,
            tail(&self.stderr)
        )
    }
}

/// The last 40 lines of a (trace-level, long) log.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// SIGTERM, for [`Run::signal_after_line`].
pub const SIGTERM: i32 = libc::SIGTERM;
/// SIGINT (Ctrl-C), for [`Run::signal_after_line`].
pub const SIGINT: i32 = libc::SIGINT;

type LineMatch<'a> = Box<dyn Fn(&str) -> bool + Send + Sync + 'a>;

/// One run of the binary: `TestEnv::cmd(args)`, then options, then [`Run::run`].
///
/// The child gets exactly: moto's environment (dummy credentials, a region) with
/// `AWS_ENDPOINT_URL` at the proxy (or at moto with `Setup::direct`), `RUST_LOG=trace`, `HOME`
/// and the working directory in the test's folder, no AWS config or credentials file, whatever
/// [`Run::env`] adds, and nothing else from the test's environment.
pub struct Run<'a> {
    env: &'a TestEnv,
    args: Vec<String>,
    vars: Vec<(String, String)>,
    stdin: Option<Vec<u8>>,
    kill_after: Option<Duration>,
    kill_when: Option<LineMatch<'a>>,
    /// The signal sent when the kill is due (SIGKILL unless [`Run::signal_after_line`]).
    signal: i32,
    traced: bool,
}

impl std::fmt::Debug for Run<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("args", &self.args)
            .field("kill_after", &self.kill_after)
            .field("traced", &self.traced)
            .finish_non_exhaustive()
    }
}

impl TestEnv {
    /// A run of `keyrotor ARGS`; `--config <the env's config>` is added after `rotate`, `plan`
    /// and `status`.
    pub fn cmd(&self, args: &[&str]) -> Run<'_> {
        let mut argv: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        if args.first().is_some_and(|a| WITH_CONFIG.contains(a)) {
            argv.insert(1, "--config".into());
            argv.insert(2, self.config.to_string_lossy().into_owned());
        }
        Run {
            env: self,
            args: argv,
            vars: Vec::new(),
            stdin: None,
            kill_after: None,
            kill_when: None,
            signal: libc::SIGKILL,
            traced: true,
        }
    }

    /// Runs `keyrotor ARGS` ([`TestEnv::cmd`] with no option) and checks it.
    pub async fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).run().await
    }
}

impl<'a> Run<'a> {
    /// Sets one more environment variable for the child.
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.vars.push((key.to_owned(), value.into()));
        self
    }

    /// Writes this to the child's stdin, then closes it (otherwise stdin is `/dev/null`).
    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(input.into());
        self
    }

    /// SIGKILLs the child this long after it starts.
    pub fn kill_after(mut self, delay: Duration) -> Self {
        self.kill_after = Some(delay);
        self.kill_when = None;
        self
    }

    /// SIGKILLs the child `delay` after it logs a line that `matches`; if it never does, the
    /// run ends by itself ([`Output::triggered`] says which).
    pub fn kill_after_line(
        mut self,
        matches: impl Fn(&str) -> bool + Send + Sync + 'a,
        delay: Duration,
    ) -> Self {
        self.kill_after = Some(delay);
        self.kill_when = Some(Box::new(matches));
        self
    }

    /// Skips the check that trace logging took effect: for runs that end before the binary
    /// logs anything (a config that does not parse, bad arguments). Leaks are still scanned.
    pub fn untraced(mut self) -> Self {
        self.traced = false;
        self
    }

    /// Runs the binary, then checks every output of the env so far for leaks (and, unless
    /// [`Run::kill_after_line`], but the child gets `signal` (SIGTERM, SIGINT) instead of
    /// SIGKILL, so its own shutdown runs.
    pub fn signal_after_line(
        mut self,
        signal: i32,
        matches: impl Fn(&str) -> bool + Send + Sync + 'a,
        delay: Duration,
    ) -> Self {
        self.signal = signal;
        self.kill_when = Some(Box::new(matches));
        self.kill_after = Some(delay);
        self
    }

    /// [`Run::untraced`], that the child really logged at trace level, the HTTP stack
    /// included).
    pub async fn run(self) -> Output {
        let (env, traced) = (self.env, self.traced);
        let output = tokio::time::timeout(RUN_TIMEOUT, self.execute())
            .await
            .unwrap_or_else(|_| panic!("keyrotor did not finish within {RUN_TIMEOUT:?}"));
        if traced {
            assert_traced(&output);
        }
        env.after_run(output).await
    }

    async fn execute(self) -> Output {
        let env = self.env;
        let dir = &env.dir;
        let mut cmd = tokio::process::Command::new(&env.binary);
        cmd.args(&self.args).env_clear().envs(env.moto.env());
        if let Some(p) = &env.proxy {
            cmd.env("AWS_ENDPOINT_URL", p.endpoint());
        }
        cmd.env("RUST_LOG", "trace");
        super::isolated_home(&mut cmd, dir)
            .envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(dir)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = cmd.spawn().expect("the keyrotor binary starts");
        if let (Some(input), Some(mut pipe)) = (self.stdin, child.stdin.take()) {
            // A child that exits without reading its input is not the writer's failure.
            let _ = pipe.write_all(&input).await;
            drop(pipe);
        }
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");

        // When the kill is due: at once relative to the start, or once the line comes.
        let (due_tx, mut due_rx) =
            tokio::sync::watch::channel(match (&self.kill_when, self.kill_after) {
                (None, Some(d)) => Some(started + d),
                _ => None,
            });
        let matches = self.kill_when;
        let delay = self.kill_after.unwrap_or_default();
        let signal = self.signal;
        let read_out = async {
            let mut buf = Vec::new();
            let _ = stdout.read_to_end(&mut buf).await;
            buf
        };
        let read_err = async move {
            let mut reader = BufReader::new(stderr);
            let mut buf = Vec::new();
            let mut triggered = false;
            loop {
                let from = buf.len();
                match reader.read_until(b'\n', &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if let Some(m) = &matches
                    && !triggered
                    && m(&String::from_utf8_lossy(&buf[from..]))
                {
                    triggered = true;
                    let _ = due_tx.send(Some(Instant::now() + delay));
                }
            }
            (buf, triggered)
        };
        let wait = async {
            let mut kill_sent = false;
            loop {
                let due = *due_rx.borrow_and_update();
                tokio::select! {
                    status = child.wait() => {
                        let status = status.expect("waiting for keyrotor");
                        return (status, kill_sent);
                    }
                    () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into()),
                        if due.is_some() && !kill_sent => {
                        if signal == libc::SIGKILL {
                            // SIGKILL: no cleanup of any kind runs in the child.
                            let _ = child.start_kill();
                        } else if let Some(pid) = child.id() {
                            // SAFETY: kill(2) on the child's own pid, which this task still
                            // owns (it has not been waited for), with a valid signal number.
                            unsafe { libc::kill(pid as libc::pid_t, signal) };
                        }
                        kill_sent = true;
                    }
                    changed = due_rx.changed(), if due.is_none() => {
                        if changed.is_err() {
                            // The stderr reader is done: no line will trigger the kill any more.
                            let status = child.wait().await.expect("waiting for keyrotor");
                            return (status, kill_sent);
                        }
                    }
                }
            }
        };
        let (stdout, (stderr, triggered), (status, kill_sent)) =
            tokio::join!(read_out, read_err, wait);
        let killed = kill_sent && status.code().is_none();
        let code = match status.code() {
            Some(c) => c,
            None if killed => -1,
            None => panic!("keyrotor {:?} was ended by a signal: {status:?}", self.args),
        };
        let stdout = if killed {
            String::from_utf8_lossy(&stdout).into_owned()
        } else {
            String::from_utf8(stdout).expect("stdout is UTF-8")
        };
        Output {
            args: self.args,
            code,
            killed,
            triggered,
            stdout,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            elapsed: started.elapsed(),
        }
    }
}

impl TestEnv {
    /// After every run: the trace check, the debugging outputs, learning what the world holds
    /// now, and the leak scan over every run so far.
    async fn after_run(&self, output: Output) -> Output {
        if std::env::var_os("KEYROTOR_BINARY_SHOW").is_some() {
            eprintln!(
                "keyrotor {:?} exited {}\n{}",
                output.args, output.code, output.stdout
            );
            for p in self.posts() {
                eprintln!("slack post ({}): {}", p.status, p.body);
            }
        }
        if let Some(dir) = std::env::var_os("KEYROTOR_BINARY_LOGS") {
            let n = self.history.lock().unwrap_or_else(|e| e.into_inner()).len();
            let file = PathBuf::from(dir).join(format!("{}-{n}.log", uuid::Uuid::new_v4()));
            std::fs::write(file, &output.stderr).expect("writing the log");
        }
        self.learn().await;
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(output.clone());
        self.assert_no_leaks();
        output
    }
}

/// Panics unless the run logged at trace level, the HTTP stack included: the leak scan means
/// something only then.
fn assert_traced(output: &Output) {
    assert!(
        output.stderr.contains(" TRACE ") && output.stderr.contains("hyper_util::"),
        "RUST_LOG=trace did not take effect: {}",
        output.show()
    );
}
