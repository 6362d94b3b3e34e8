//! Running a child process and measuring it: wall time (spawn to reap), CPU time (user + sys)
//! and peak RSS from `wait4(2)`'s `rusage` — the child's own figures, not its parent's and not
//! its siblings'. Plus the summary statistics the report prints.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// What `wait4` reported for one child.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// From just before `spawn` to the return of `wait4`.
    pub wall: Duration,
    /// `ru_utime + ru_stime`.
    pub cpu: Duration,
    /// `ru_maxrss` in bytes (Linux reports KiB).
    pub max_rss: u64,
    /// The exit code, or `128 + signal` when a signal ended it.
    pub code: i32,
}

/// `CLOCK_MONOTONIC` in nanoseconds (the clock `Instant` uses on Linux).
pub fn monotonic_ns() -> u64 {
    // SAFETY: a zeroed timespec is valid; clock_gettime fills it in.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

// ------------------------------------------------------------------------------ the spawner
//
// Linux's `ru_maxrss` is not the child's own peak: fork copies the parent's memory map with its
// high-water mark, and exec folds that mark into the process's `maxrss` before the new program
// runs. A child forked by the bench process (which holds the emulator's state and the proxy's
// log: tens of MiB with 1,000 targets) would report at least the bench's own peak. So children
// are spawned by a small helper process (`keyrotor-bench spawner`, started once, no async
// runtime, a few MiB) whose peak is the floor of every measurement; RESULTS.md states it.

/// A request to the spawner: one line of JSON.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Spec {
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<String>,
    stdout: String,
    stderr: String,
}

struct Spawner {
    child: std::process::Child,
    input: std::process::ChildStdin,
    output: std::io::BufReader<std::process::ChildStdout>,
}

static SPAWNER: std::sync::Mutex<Option<Spawner>> = std::sync::Mutex::new(None);

fn spawner() -> Result<std::sync::MutexGuard<'static, Option<Spawner>>> {
    let mut g = SPAWNER.lock().unwrap_or_else(|e| e.into_inner());
    if g.is_none() {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("spawner")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting the spawner")?;
        let input = child.stdin.take().context("spawner stdin")?;
        let output = std::io::BufReader::new(child.stdout.take().context("spawner stdout")?);
        *g = Some(Spawner {
            child,
            input,
            output,
        });
    }
    Ok(g)
}

fn read_line(sp: &mut Spawner) -> Result<serde_json::Value> {
    use std::io::BufRead;
    let mut line = String::new();
    sp.output.read_line(&mut line)?;
    let v: serde_json::Value =
        serde_json::from_str(&line).with_context(|| format!("the spawner answered {line:?}"))?;
    if let Some(e) = v["error"].as_str() {
        bail!("spawner: {e}");
    }
    Ok(v)
}

/// The spawner's own peak RSS (bytes): the floor under every peak RSS measured.
pub fn spawner_floor() -> Option<u64> {
    let g = SPAWNER.lock().ok()?;
    let pid = g.as_ref()?.child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// `keyrotor-bench spawner`: reads [`Spec`]s from stdin, one at a time; for each prints
/// `{"pid","t0_ns"}` right after spawning, then `{"wall_ns","cpu_ns","max_rss","code"}` once
/// `wait4` returns.
pub fn spawner_main() -> Result<()> {
    use std::io::{BufRead, Write};
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let line = line?;
        let answer = |out: &mut std::io::Stdout, v: serde_json::Value| -> Result<()> {
            writeln!(out, "{v}")?;
            out.flush()?;
            Ok(())
        };
        let spec: Spec = match serde_json::from_str(&line) {
            Ok(s) => s,
            Err(e) => {
                answer(&mut out, serde_json::json!({"error": e.to_string()}))?;
                continue;
            }
        };
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&spec.stdout)?)
            .stderr(std::fs::File::create(&spec.stderr)?);
        if let Some(d) = &spec.cwd {
            cmd.current_dir(d);
        }
        let t0 = monotonic_ns();
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                answer(
                    &mut out,
                    serde_json::json!({"error": format!("{}: {e}", spec.program)}),
                )?;
                continue;
            }
        };
        let pid = child.id();
        answer(&mut out, serde_json::json!({"pid": pid, "t0_ns": t0}))?;
        let u = wait4(pid as libc::pid_t)?;
        let wall = monotonic_ns() - t0;
        answer(
            &mut out,
            serde_json::json!({"wall_ns": wall, "cpu_ns": u.cpu.as_nanos() as u64,
                               "max_rss": u.max_rss, "code": u.code}),
        )?;
    }
    Ok(())
}

/// Blocks until `pid` ends; its rusage (wall left zero).
fn wait4(pid: libc::pid_t) -> Result<Usage> {
    let mut status: libc::c_int = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointers to locals; pid is our unreaped child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else if libc::WIFSIGNALED(status) {
                128 + libc::WTERMSIG(status)
            } else {
                -1
            };
            let tv = |t: libc::timeval| {
                Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
            };
            return Ok(Usage {
                wall: Duration::ZERO,
                cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
                max_rss: (ru.ru_maxrss as u64) * 1024,
                code,
            });
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            bail!("wait4({pid}): {err}");
        }
    }
}

/// A child started by the spawner; [`Running::wait`] collects its usage.
pub struct Running {
    pid: libc::pid_t,
    started: Instant,
}

impl Running {
    /// Spawns `cmd` (its program, arguments, explicitly set environment — the environment is
    /// always cleared first — and working directory) through the spawner, with stdout and stderr
    /// to these files.
    pub fn spawn(cmd: &mut Command, stdout: &Path, stderr: &Path) -> Result<Self> {
        let spec = Spec {
            program: cmd.get_program().to_string_lossy().into_owned(),
            args: cmd
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            env: cmd
                .get_envs()
                .filter_map(|(k, v)| {
                    Some((
                        k.to_string_lossy().into_owned(),
                        v?.to_string_lossy().into_owned(),
                    ))
                })
                .collect(),
            cwd: cmd
                .get_current_dir()
                .map(|d| d.to_string_lossy().into_owned()),
            stdout: stdout.to_string_lossy().into_owned(),
            stderr: stderr.to_string_lossy().into_owned(),
        };
        let mut g = spawner()?;
        let sp = g.as_mut().context("no spawner")?;
        {
            use std::io::Write;
            writeln!(sp.input, "{}", serde_json::to_string(&spec)?)?;
            sp.input.flush()?;
        }
        let v = read_line(sp)?;
        let (now_i, now_ns) = (Instant::now(), monotonic_ns());
        let t0_ns = v["t0_ns"].as_u64().context("no t0_ns")?;
        let started = now_i
            .checked_sub(Duration::from_nanos(now_ns.saturating_sub(t0_ns)))
            .unwrap_or(now_i);
        let pid = v["pid"].as_i64().context("no pid")? as libc::pid_t;
        Ok(Self { pid, started })
    }

    /// When the spawner called `spawn`.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Sends SIGKILL (for servers that never exit by themselves, like a Lambda bootstrap).
    pub fn kill(&self) {
        // SAFETY: kill(2) on the pid of a child the spawner has not reaped yet.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
        }
    }

    /// Blocks until the child ends; its usage.
    pub fn wait(self) -> Result<Usage> {
        let mut g = spawner()?;
        let sp = g.as_mut().context("no spawner")?;
        let v = read_line(sp)?;
        Ok(Usage {
            wall: Duration::from_nanos(v["wall_ns"].as_u64().unwrap_or(0)),
            cpu: Duration::from_nanos(v["cpu_ns"].as_u64().unwrap_or(0)),
            max_rss: v["max_rss"].as_u64().unwrap_or(0),
            code: v["code"].as_i64().unwrap_or(-1) as i32,
        })
    }
}

/// Spawns `cmd` through the spawner and waits for it off the async runtime (the servers it
/// talks to keep running).
pub async fn run(mut cmd: Command, stdout: &Path, stderr: &Path) -> Result<Usage> {
    let running = Running::spawn(&mut cmd, stdout, stderr)?;
    tokio::task::spawn_blocking(move || running.wait()).await?
}

/// Median and spread of repeated measurements.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(values: &[f64]) -> Self {
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => v[n / 2],
            _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Self {
            n,
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }

    /// `median (min–max)` with `digits` decimals, e.g. `412.3 (398.0–430.9)`; one value alone
    /// when `n == 1`.
    pub fn show(&self, digits: usize) -> String {
        if self.n <= 1 {
            format!("{:.digits$}", self.median)
        } else {
            format!(
                "{:.digits$} ({:.digits$}–{:.digits$})",
                self.median, self.min, self.max
            )
        }
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Wall (ms), CPU (ms) and peak RSS (MiB) over repeated runs.
#[derive(Debug, Clone, Default)]
pub struct Runs {
    pub usages: Vec<Usage>,
}

impl Runs {
    pub fn push(&mut self, u: Usage) {
        self.usages.push(u);
    }
    pub fn wall_ms(&self) -> Stats {
        Stats::of(&self.usages.iter().map(|u| ms(u.wall)).collect::<Vec<_>>())
    }
    pub fn cpu_ms(&self) -> Stats {
        Stats::of(&self.usages.iter().map(|u| ms(u.cpu)).collect::<Vec<_>>())
    }
    pub fn rss_mib(&self) -> Stats {
        Stats::of(
            &self
                .usages
                .iter()
                .map(|u| mib(u.max_rss))
                .collect::<Vec<_>>(),
        )
    }
}
