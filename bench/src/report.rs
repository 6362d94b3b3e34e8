//! The Markdown report (bench/RESULTS.md).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use keyrotor_testkit::ado::RateLimit;
use serde_json::Value;

use crate::measure::{Stats, mib};
use crate::world::Calls;
use crate::{Cold, FleetRow, ScanRow, Single, stats};

/// The old design's artifact: the Azure CLI container image.
const OLD_IMAGE_MB: f64 = 299.41;

pub struct Report {
    text: String,
    tiny: bool,
}

/// The Lambda package `scripts/package-lambda` built: its `bootstrap` and `bootstrap.zip`.
#[derive(Debug, Clone, Copy)]
pub struct Packaged {
    pub bin: u64,
    pub zip: u64,
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "?".into())
}

fn proc_field(file: &str, key: &str) -> String {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" / "))
        .unwrap_or_else(|_| "?".into())
}

fn met(ok: bool) -> &'static str {
    if ok { "**met**" } else { "**not met**" }
}

/// Per-run calls of one service, as `n` or `min–max` when runs differ.
fn range(calls: &[Calls], f: impl Fn(&Calls) -> usize) -> String {
    let v: Vec<usize> = calls.iter().map(f).collect();
    let (lo, hi) = (
        v.iter().min().copied().unwrap_or(0),
        v.iter().max().copied().unwrap_or(0),
    );
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}–{hi}")
    }
}

/// `Op ×n, Op ×n` for one service, from the first run.
fn ops(calls: &[Calls], service: &str) -> String {
    calls
        .first()
        .and_then(|c| c.aws.get(service))
        .map(|m| {
            m.iter()
                .map(|(op, n)| format!("{op} ×{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn ado_ops(calls: &[Calls]) -> String {
    calls
        .first()
        .map(|c| {
            c.ado
                .iter()
                .map(|(op, n)| format!("{op} ×{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

impl Report {
    pub fn new(tiny: &bool) -> Self {
        let mut text = String::new();
        text.push_str("# keyrotor benchmarks: results\n\n");
        if *tiny {
            text.push_str("> **`--tiny` run**: smallest sizes, one repeat, a shrunken rate limit. It proves the benchmarks still run; its numbers are not results.\n\n");
        }
        text.push_str("Written by `bench/run` (see [bench/README.md](README.md)); do not edit by hand. Benchmarks, not tests: nothing here fails on speed. Every figure gives the median and, in parentheses, the min–max over the stated number of repeated runs.\n\n");
        Self { text, tiny: *tiny }
    }

    /// Notes that only some figures ran (`--only`).
    pub fn partial(&mut self, only: &[String]) {
        let _ = writeln!(
            self.text,
            "> **Partial run** (`--only {}`): the other figures were not run.\n",
            only.join(",")
        );
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    fn w(&mut self, s: &str) {
        self.text.push_str(s);
    }

    pub fn machine(&mut self, keyrotor: &Path, bootstrap: Option<&Path>) {
        let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
        let mem = proc_field("/proc/meminfo", "MemTotal");
        let cpu = proc_field("/proc/cpuinfo", "model name");
        let commit = sh("git", &["rev-parse", "HEAD"]);
        let dirty = sh("git", &["status", "--porcelain"]);
        let dirty = if dirty.is_empty() || dirty == "?" {
            String::new()
        } else {
            format!(
                " (plus uncommitted changes in {} paths)",
                dirty.lines().count()
            )
        };
        let profile = if keyrotor.to_string_lossy().contains("/release/") {
            "release"
        } else {
            "debug (`--tiny`)"
        };
        let mut s = String::new();
        let _ = writeln!(s, "## Machine and run\n");
        let _ = writeln!(s, "| | |\n|---|---|");
        let _ = writeln!(
            s,
            "| date (UTC) | {} |",
            sh("date", &["-u", "+%Y-%m-%d %H:%M"])
        );
        let _ = writeln!(s, "| git commit | `{commit}`{dirty} |");
        let _ = writeln!(s, "| CPU | {cpu} |");
        let _ = writeln!(s, "| nproc | {nproc} |");
        let _ = writeln!(s, "| memory | {mem} |");
        let _ = writeln!(s, "| kernel | {} |", sh("uname", &["-sr"]));
        let _ = writeln!(s, "| load average at start (1/5/15 min) | {} |", loadavg());
        let _ = writeln!(s, "| rustc | {} |", sh("rustc", &["-V"]));
        let _ = writeln!(s, "| python | {} |", sh("python3", &["-V"]));
        let _ = writeln!(
            s,
            "| moto | {} (server mode, werkzeug, threaded) |",
            keyrotor_testkit::moto::MOTO_VERSION
        );
        let _ = writeln!(
            s,
            "| keyrotor binary | {profile} build, {:.2} MiB |",
            mib(std::fs::metadata(keyrotor).map_or(0, |m| m.len()))
        );
        if let Some(b) = bootstrap {
            let _ = writeln!(s, "| bootstrap binary | `{}` |", b.display());
        }
        let _ = writeln!(
            s,
            "\nEverything runs on this one machine: moto (one Python process), the testkit's AWS proxy (counts every AWS request by service and operation), the Azure DevOps emulator and the Slack sink (both in the bench process), and the measured child. Wall time is from `spawn` to `wait4` returning; CPU time is the child's `ru_utime + ru_stime` and peak RSS its `ru_maxrss`, both from `wait4(2)` — the child alone, not moto or the emulators. Children are spawned by a small helper process, not by the bench process itself: Linux carries the forking parent's high-water RSS into the child's `ru_maxrss`, which made an earlier version of this benchmark report the bench process's own peak (up to 52.6 MiB) as the child's. The child gets a clean environment (`AWS_ENDPOINT_URL` = the proxy, dummy credentials, no `RUST_LOG`: keyrotor logs at its default level).\n"
        );
        self.w(&s);
    }

    pub fn figure1(&mut self, k: &Single, peers: &[Single], warm: bool, concurrency: usize) {
        let mut s = String::new();
        let n = k.runs.usages.len();
        let _ = writeln!(s, "## 1. One rotation, end to end\n");
        let _ = writeln!(
            s,
            "One target (an IAM user with one key, its secret, one AWS service connection in one project, authorized for one pipeline), `keyrotor rotate --force --output json` against moto + the ADO emulator + the Slack sink. Propagation waits are effectively zero: `verify_interval = \"1ms\"`, `verify_consecutive = 1` (moto accepts a new key at once; against real IAM the verify step waits ~5–20 s, which this figure leaves out on purpose). `delete_old_key_after` is the default `0s`; `policy.concurrency = {concurrency}`. {n} measured runs per tool, one after the other on the same seeded state (each is a full rotation: `--force`){}.\n",
            if warm {
                ", after one unmeasured warm-up run"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "| | runs ok | wall ms | CPU ms (user+sys) | peak RSS MiB |\n|---|---|---|---|---|"
        );
        for t in std::iter::once(k).chain(peers) {
            let _ = writeln!(
                s,
                "| {} | {}/{} | {} | {} | {} |",
                t.name,
                t.ok,
                t.runs.usages.len(),
                t.runs.wall_ms().show(1),
                t.runs.cpu_ms().show(1),
                t.runs.rss_mib().show(1)
            );
        }
        for p in peers {
            let r = |a: Stats, b: Stats| a.median / b.median;
            let _ = writeln!(
                s,
                "\nkeyrotor / {}: wall **{:.2}×**, CPU **{:.2}×**, peak RSS **{:.2}×** (ratios of medians).",
                p.name,
                r(k.runs.wall_ms(), p.runs.wall_ms()),
                r(k.runs.cpu_ms(), p.runs.cpu_ms()),
                r(k.runs.rss_mib(), p.runs.rss_mib())
            );
        }
        for t in std::iter::once(k).chain(peers) {
            if !t.note.is_empty() {
                let _ = writeln!(s, "\n{}: {}", t.name, t.note);
            }
        }
        let _ = writeln!(s, "\n### Calls per rotation\n");
        let _ = writeln!(
            s,
            "Counted by the AWS proxy (every HTTP request to moto, by service and operation), the ADO emulator's request log and the Slack sink. \"min\" is what the protocol in `crates/core/src/protocol/` needs for this case (one target, one endpoint, a key in steady state, grace 0, `verify_consecutive = 1`); see the notes below the table.\n"
        );
        let _ = write!(s, "| API | keyrotor | min | ");
        for p in peers {
            let _ = write!(s, "{} | ", p.name);
        }
        let _ = write!(s, "keyrotor's operations |\n|---|---|---|");
        for _ in peers {
            s.push_str("---|");
        }
        s.push_str("---|\n");
        let rows: [(&str, &str, &str); 4] = [
            ("IAM", "iam", "4"),
            ("Secrets Manager", "secretsmanager", "6"),
            ("SSM", "ssm", "2"),
            ("STS", "sts", "1"),
        ];
        for (label, svc, min) in rows {
            let _ = write!(
                s,
                "| {label} | {} | {min} | ",
                range(&k.calls, |c| c.aws_total(svc))
            );
            for p in peers {
                let _ = write!(s, "{} | ", range(&p.calls, |c| c.aws_total(svc)));
            }
            let _ = writeln!(s, "{} |", ops(&k.calls, svc));
        }
        let _ = write!(
            s,
            "| Azure DevOps | {} | 4 | ",
            range(&k.calls, Calls::ado_total)
        );
        for p in peers {
            let _ = write!(s, "{} | ", range(&p.calls, Calls::ado_total));
        }
        let _ = writeln!(s, "{} |", ado_ops(&k.calls));
        let _ = write!(s, "| Slack | {} | 1 | ", range(&k.calls, |c| c.slack));
        for p in peers {
            let _ = write!(s, "{} | ", range(&p.calls, |c| c.slack));
        }
        let _ = writeln!(s, "webhook POST |");
        for p in peers {
            let _ = writeln!(
                s,
                "\n{} made: {}; ADO: {}.",
                p.name,
                ["iam", "secretsmanager", "ssm", "sts"]
                    .iter()
                    .map(|svc| format!("{svc}: {}", ops(&p.calls, svc)))
                    .filter(|x| !x.ends_with(": "))
                    .collect::<Vec<_>>()
                    .join("; "),
                ado_ops(&p.calls)
            );
        }
        s.push_str(MINIMUM_NOTES);
        self.w(&s);
    }

    pub fn sdk_probe(&mut self, code: i32, doc: &Value, calls: &Calls, log: &[String]) {
        let mut s = String::new();
        let _ = writeln!(s, "\n### The peer and the `azure-devops` SDK\n");
        s.push_str(PEER_NOTES);
        let _ = writeln!(
            s,
            "\nMeasured this run: `peer.py --ado sdk` exited {code} ({}). The emulator logged:\n",
            doc["error"].as_str().unwrap_or("no error")
        );
        for l in log {
            let _ = writeln!(s, "- `{l}`");
        }
        let _ = writeln!(
            s,
            "\n(AWS calls before it stopped: IAM {}, Secrets Manager {}.)",
            calls.aws_total("iam"),
            calls.aws_total("secretsmanager")
        );
        self.w(&s);
    }

    pub fn figure3(
        &mut self,
        rows: &[FleetRow],
        skipped: &[(usize, f64)],
        limited: &[FleetRow],
        concurrency: usize,
        rl: &RateLimit,
    ) {
        let mut s = String::new();
        let _ = writeln!(s, "\n## 3. Fleet scale\n");
        if !rows.is_empty() || !skipped.is_empty() {
            let _ = writeln!(
                s,
                "N targets, each its own IAM user, secret and AWS service connection (seeded 16 at a time), all in ONE `keyrotor rotate --force` with `policy.concurrency = {concurrency}` (the default). Same zero-wait verify settings as figure 1. Repeated runs rotate the same fleet again.\n"
            );
            let _ = writeln!(
                s,
                "| targets | runs | wall s | ms per target | CPU s | peak RSS MiB | outcomes (all runs) | AWS requests / target | ADO requests / target | seeding s |\n|---|---|---|---|---|---|---|---|---|---|"
            );
            for r in rows {
                let per: Vec<f64> = r
                    .runs
                    .usages
                    .iter()
                    .map(|u| u.wall.as_secs_f64() * 1000.0 / r.targets as f64)
                    .collect();
                let wall: Vec<f64> = r.runs.usages.iter().map(|u| u.wall.as_secs_f64()).collect();
                let cpu: Vec<f64> = r.runs.usages.iter().map(|u| u.cpu.as_secs_f64()).collect();
                let aws: usize = r.calls.aws.values().flat_map(|m| m.values()).sum();
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} |",
                    r.targets,
                    r.runs.usages.len(),
                    stats(&wall).show(2),
                    stats(&per).show(1),
                    stats(&cpu).show(2),
                    r.runs.rss_mib().show(1),
                    fmt_map(&r.outcomes),
                    aws as f64 / r.targets as f64,
                    r.calls.ado_total() as f64 / r.targets as f64,
                    r.seed_time.as_secs_f64()
                );
            }
            for (n, est) in skipped {
                let _ = writeln!(
                    s,
                    "| {n} | 0 | *not run; extrapolated ≈ {est:.0}* | | | | | | | |"
                );
            }
            // Growth.
            if rows.len() >= 2 {
                let _ = writeln!(s, "\nGrowth (medians):\n");
                for pair in rows.windows(2) {
                    let (a, b) = (&pair[0], &pair[1]);
                    let k = b.targets as f64 / a.targets as f64;
                    let wall = b.runs.wall_ms().median / a.runs.wall_ms().median;
                    let rss = b.runs.rss_mib().median - a.runs.rss_mib().median;
                    let _ = writeln!(
                        s,
                        "- {} → {} targets (×{k:.0}): wall ×{wall:.2}, peak RSS {:+.1} MiB ({:+.1} KiB per added target)",
                        a.targets,
                        b.targets,
                        rss,
                        rss * 1024.0 / (b.targets - a.targets) as f64
                    );
                }
            }
            let big = rows.iter().find(|r| r.targets >= 1000);
            let _ = writeln!(
                s,
                "\n**Target: 1,000 targets with peak RSS under 64 MB and no failed target.**"
            );
            match big {
                Some(r) => {
                    let rss = r.runs.rss_mib().max;
                    let failed: usize = r
                        .outcomes
                        .iter()
                        .filter(|(k, _)| k.as_str() != "rotated")
                        .map(|(_, v)| v)
                        .sum();
                    let _ = writeln!(
                        s,
                        "Peak RSS {rss:.1} MiB = {:.1} MB: {}{}; failed targets: {failed}: {}.",
                        rss * 1.048_576,
                        met(rss * 1.048_576 < 64.0),
                        if rss * 1.048_576 < 64.0 {
                            format!(" ({:.1} MB to spare)", 64.0 - rss * 1.048_576)
                        } else {
                            format!(" (missed by {:.1} MB)", rss * 1.048_576 - 64.0)
                        },
                        met(failed == 0)
                    );
                }
                None => {
                    let _ = writeln!(s, "Not measured at 1,000 in this run (see the table).");
                }
            }
        }
        if limited.is_empty() {
            self.w(&s);
            return;
        }
        let _ = writeln!(s, "\n### With Azure DevOps' rate limit\n");
        let _ = writeln!(
            s,
            "The emulator's `RateLimit`: {} TSTUs per sliding {} s per identity (one PAT = one identity; the service's window is 300 s, shortened here: pacing follows the service's headers, whatever the window); a request costs {} TSTU; past {} TSTUs requests are delayed {} ms (answered normally, with `X-RateLimit-Delay`, `X-RateLimit-Remaining: 0` and `X-RateLimit-Reset`, the epoch second at which usage would be back at zero if the identity stopped), at {} TSTUs they get HTTP 429 `TF400733` with `Retry-After` (seconds until the oldest counted request leaves the window). One `keyrotor rotate --force` per size, fresh emulator, `policy.concurrency = 4`.\n",
            rl.limit,
            rl.window_seconds,
            rl.cost_per_request,
            rl.limit,
            rl.delay_ms,
            rl.block_threshold()
        );
        s.push_str(TSTU_NOTES);
        let _ = writeln!(
            s,
            "\n| targets | projects | wall s | peak RSS MiB | outcomes | failed targets | ADO requests | per target | windows of budget used (requests ÷ {}) | wall ÷ window | delayed answers | 429 answers | pauses ≥ 1 s between requests |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            rl.limit
        );
        for r in limited {
            let p = &r.calls.ado_pauses;
            let pauses = if p.is_empty() {
                "none".to_owned()
            } else {
                format!(
                    "{}: {:.1} s in all, longest {:.1} s",
                    p.len(),
                    p.iter().sum::<f64>(),
                    p.iter().copied().fold(0.0, f64::max)
                )
            };
            let n = r.calls.ado_total() as f64;
            let wall = r.runs.wall_ms().median / 1000.0;
            let _ = writeln!(
                s,
                "| {} | {} | {wall:.1} | {:.1} | {} | {} | {n:.0} | {:.2} | {:.2} | {:.1} | {} | {} | {pauses} |",
                r.targets,
                r.projects,
                r.runs.rss_mib().median,
                fmt_map(&r.outcomes),
                failed(r),
                n / r.targets as f64,
                n / f64::from(rl.limit),
                wall / rl.window_seconds as f64,
                r.calls.ado_delayed,
                r.calls.ado_status.get(&429).copied().unwrap_or(0),
            );
        }
        let _ = writeln!(
            s,
            "\nThe windows a run uses are its requests over the budget of one window: the fewest windows its requests fit in, whatever the window's length. \"wall ÷ window\" is the run's wall time in windows of this benchmark's length: above the windows of budget, the run was bound by moto and the emulator, not by the budget; at or near them, by the budget."
        );
        let _ = writeln!(
            s,
            "\n**Targets: at most 1.5 Azure DevOps requests per target for 1,000 targets in one project, 1.6 in ten; within 8 windows of the real budget; 0 failed.**\n"
        );
        for r in limited {
            let per = r.calls.ado_total() as f64 / r.targets as f64;
            let windows = r.calls.ado_total() as f64 / f64::from(rl.limit);
            let bound = if r.projects >= 10 { 1.6 } else { 1.5 };
            let _ = writeln!(
                s,
                "- {} targets in {} project(s): {per:.2} requests per target (at most {bound}): {}; {windows:.1} windows (at most 8): {}; {} failed: {}.",
                r.targets,
                r.projects,
                met(per <= bound),
                met(windows <= 8.0),
                failed(r),
                met(failed(r) == 0)
            );
        }
        if limited.iter().any(|r| !r.failures.is_empty()) {
            let _ = writeln!(s, "\n{RATE_FAILED}");
        }
        for r in limited {
            if !r.failures.is_empty() {
                let _ = writeln!(
                    s,
                    "\nHow the {} targets that were not rotated at {} ended (`failed_step: error` → count):\n",
                    r.failures.values().sum::<usize>(),
                    r.targets
                );
                for (k, v) in &r.failures {
                    let _ = writeln!(s, "- {v} × `{}`", k.replace('`', "'"));
                }
            }
        }
        self.w(&s);
    }

    pub fn figure4(
        &mut self,
        sizes: Option<(u64, Option<u64>, bool)>,
        packaged: Option<Packaged>,
        boot: Option<&Cold>,
        py: Option<&Cold>,
        why_not: &str,
    ) {
        let mut s = String::new();
        let _ = writeln!(s, "\n## 4. Lambda artifact and cold start\n");
        let Some((bin, zip, release)) = sizes else {
            let _ = writeln!(s, "Not measured: {why_not}.\n");
            self.w(&s);
            return;
        };
        let _ = writeln!(
            s,
            "What is deployed is the zip `scripts/package-lambda` builds: the same `bootstrap`, compiled for size (`CARGO_PROFILE_RELEASE_LTO=fat`, `CODEGEN_UNITS=1`, `OPT_LEVEL=s`; the release profile strips symbols) and zipped with `zip -X`. `bench/run` runs it (`--no-dist`: deploy/dist is left alone) and measures that file; the plain release build (tuned for speed), zipped with `zip -9`, is shown beside it.\n"
        );
        let _ = writeln!(s, "| | size | target | |\n|---|---|---|---|");
        let _ = writeln!(
            s,
            "| old design: Azure CLI container image | {OLD_IMAGE_MB} MB | | |"
        );
        match packaged {
            Some(p) => {
                let mb = p.zip as f64 / 1e6;
                let _ = writeln!(
                    s,
                    "| `bootstrap` x86_64, packaged (`scripts/package-lambda`: fat LTO, one codegen unit, `opt-level = \"s\"`, stripped) | {:.2} MB | | |",
                    p.bin as f64 / 1e6
                );
                let _ = writeln!(
                    s,
                    "| **`bootstrap.zip` x86_64, packaged: what is deployed** | **{mb:.2} MB** ({} bytes; {:.1}× smaller than the image) | < 6 MB | {} |",
                    p.zip,
                    OLD_IMAGE_MB / mb,
                    met(mb < 6.0)
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "| `bootstrap.zip` x86_64, packaged (`scripts/package-lambda`) | not measured in this run{} | < 6 MB | |",
                    if self.tiny {
                        " (`--tiny` skips the multi-minute fat-LTO build)"
                    } else {
                        " (no `--lambda-zip`, or it was not built)"
                    }
                );
            }
        }
        let profile = if release {
            "plain release build, stripped"
        } else {
            "DEBUG build, `--tiny`"
        };
        let _ = writeln!(
            s,
            "| `bootstrap` x86_64 ({profile}) | {:.2} MB | | |",
            bin as f64 / 1e6
        );
        match zip {
            Some(z) => {
                let mb = z as f64 / 1e6;
                let _ = writeln!(
                    s,
                    "| `bootstrap.zip` x86_64 ({profile}, `zip -9`), for comparison | {mb:.2} MB | | |"
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "| `bootstrap.zip` ({profile}) | not measured: `zip` failed or is missing | | |"
                );
            }
        }
        let _ = writeln!(
            s,
            "| `bootstrap.zip` arm64 | not measured: the aarch64 Rust standard library is not obtainable on this machine (`scripts/package-lambda` skips arm64 and says so; see deploy/README.md) | < 6 MB | |"
        );
        if packaged.is_some_and(|p| p.zip as f64 / 1e6 >= 6.0) {
            let _ = writeln!(s, "\n{ZIP_WHY}");
        }
        let _ = writeln!(
            s,
            "\nCold start: a minimal local Lambda Runtime API (bench/src/lambda.rs) with the first event (`{{\"step\":\"targets\"}}`: read the config from SSM, list the targets) queued before exec; time from `spawn` to the runtime's first `GET /2018-06-01/runtime/invocation/next`, and to its first `POST …/response`. For `bootstrap` each run then drives one full rotation through the runtime API (`inspect`, `cleanup`, `create`, `verify`, `push`, `confirm`, `promote`, `retire`, `report` against moto + the emulator + the sink) before SIGKILL, so its peak RSS covers the whole step sequence. The Python peer (bench/peer/lambda_handler.py) imports boto3 and azure.devops and builds an SSM client at init, then answers the same event by reading the same parameter; it is a bare loop without AWS's Python runtime (awslambdaric), so it is a lower bound for Python. No Lambda sandbox here: no Firecracker, no image download, no network to AWS — both sides get the same advantage.\n"
        );
        let _ = writeln!(
            s,
            "| runtime | runs | exec → first `next` ms | exec → first response ms | CPU ms | peak RSS MiB |\n|---|---|---|---|---|---|"
        );
        for c in [boot, py].into_iter().flatten() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                c.name,
                c.runs.usages.len(),
                stats(&c.to_next_ms).show(1),
                stats(&c.to_response_ms).show(1),
                c.runs.cpu_ms().show(1),
                c.runs.rss_mib().show(1)
            );
        }
        for c in [boot, py].into_iter().flatten() {
            if !c.note.is_empty() {
                let _ = writeln!(s, "\n{}: error in a run: {}", c.name, c.note);
            }
        }
        if let (Some(b), Some(p)) = (boot, py)
            && !b.to_next_ms.is_empty()
            && !p.to_next_ms.is_empty()
        {
            let bn = stats(&b.to_next_ms).median;
            let pn = stats(&p.to_next_ms).median;
            let br = stats(&b.to_response_ms).median;
            let pr = stats(&p.to_response_ms).median;
            let _ = writeln!(
                s,
                "\n**Target: < 20 ms to the first `next`.** `bootstrap`: {bn:.1} ms: {}{}. Python: {pn:.1} ms. Ratio bootstrap/Python: to first `next` **{:.3}×** (Python takes {:.0}× as long), to first response **{:.3}×**.",
                met(bn < 20.0),
                if bn < 20.0 {
                    format!(" ({:.1} ms to spare)", 20.0 - bn)
                } else {
                    format!(" (missed by {:.1} ms)", bn - 20.0)
                },
                bn / pn,
                pn / bn,
                br / pr
            );
            let rss = b.runs.rss_mib().max;
            let _ = writeln!(
                s,
                "\n**Peak RSS of `bootstrap` over a full step sequence vs the 128 MB Lambda minimum:** {rss:.1} MiB (max of {} runs) = {:.0}% of 128 MB: {}.",
                b.runs.usages.len(),
                rss * 1.048_576 / 128.0 * 100.0,
                met(rss * 1.048_576 < 128.0)
            );
        }
        self.w(&s);
    }

    pub fn figure5(&mut self, r: &ScanRow) {
        let wall = r.runs.wall_ms();
        let one_at_a_time = r.requests as f64 * r.delay_ms as f64 / 1000.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\n## 5. The holder scan of many projects\n\nBefore a key is deactivated or deleted (retire, make room, compensation) keyrotor lists every AWS connection of the organization: `GET _apis/projects` (100 a page), then one listing per project, {} at a time through the run's one paced client (`keyrotor_ado::SCAN_CONCURRENCY`, crates/ado/src/audit.rs). On the Step Functions path the scan runs inside the rotator's 60 s function. Measured with `keyrotor audit`, which makes the same scan, against {} projects with the emulator holding every request {} ms (a distant or busy Azure DevOps); the connections use OIDC, so the audit asks IAM nothing and its time is the scan's.\n",
            keyrotor_ado::SCAN_CONCURRENCY,
            r.projects,
            r.delay_ms
        );
        let _ = writeln!(
            s,
            "| projects | ms a request | runs | requests a scan | most at once | wall s |\n|---|---|---|---|---|---|\n| {} | {} | {} | {} | {} | {:.2} ({:.2}–{:.2}) |\n",
            r.projects,
            r.delay_ms,
            wall.n,
            r.requests,
            r.peak,
            wall.median / 1000.0,
            wall.min / 1000.0,
            wall.max / 1000.0
        );
        let _ = writeln!(
            s,
            "**{} projects at {} ms a request: the scan took {:.1} s** (median; one request at a time it would take {:.1} s). Target: well inside a Lambda step's 60 s, whatever the number of projects within reason: {}.",
            r.projects,
            r.delay_ms,
            wall.median / 1000.0,
            one_at_a_time,
            met(wall.median / 1000.0 < 20.0)
        );
        self.w(&s);
    }

    pub fn footer(&mut self, took: Duration, floor: Option<u64>) {
        let _ = writeln!(
            self.text,
            "\nPeak RSS floor: children are spawned by a small helper process (`keyrotor-bench spawner`), because Linux folds the forking parent's high-water RSS into the child's `ru_maxrss`; a child's reported peak is therefore at least the helper's own peak, {} MiB here.",
            floor.map_or("?".into(), |b| format!("{:.1}", mib(b)))
        );
        let tiny = if self.tiny { " (`--tiny`)" } else { "" };
        let _ = writeln!(
            self.text,
            "\n---\nThe whole benchmark{tiny} took {:.0} s. Load average at the end: {} (on {} CPUs; anything above the benchmark's own ~1–2 means other work shared the machine and the times are inflated).",
            took.as_secs_f64(),
            loadavg(),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
    }
}

/// Targets of a fleet run that did not rotate.
fn failed(r: &FleetRow) -> usize {
    r.outcomes
        .iter()
        .filter(|(k, _)| k.as_str() != "rotated")
        .map(|(_, v)| v)
        .sum()
}

fn fmt_map(m: &BTreeMap<String, usize>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

const ZIP_WHY: &str = "Why the packaged zip misses 6 MB: `bootstrap` links the AWS SDK clients for IAM, Secrets Manager, SSM and STS (with aws-config), aws-lc-rs cryptography, hyper/reqwest with rustls, tokio and lambda_runtime. Not tried here: `opt-level = \"z\"`, `panic = \"abort\"` (deploy/README.md explains why panics unwind), and the arm64 build.";

const RATE_FAILED: &str = "Targets failed although the client paces itself: their errors below say which bound ran out (a request refused `max_rate_limited_attempts` times, a wait beyond `rate_limit_max_wait`, or a failure that is not the rate limit). Pacing exists so that this does not happen while Azure DevOps merely asks the client to wait.";

const MINIMUM_NOTES: &str = "
How the minimum is derived (crates/core/src/protocol/, this case: one endpoint, the key in steady state, grace 0):

- **IAM 4**: `ListAccessKeys` (inspect: which keys exist), `CreateAccessKey` (create), `UpdateAccessKey` Inactive then `DeleteAccessKey` (retire deactivates before it deletes).
- **Secrets Manager 6**: `DescribeSecret` (inspect: which version holds which stage), `GetSecretValue` AWSCURRENT (inspect: the key to fall back to), `PutSecretValue` of the intent record and `PutSecretValue` of the new key, both at AWSPENDING (create: the intent announces the key before it exists, so a concurrent run does not take it for an orphan), `UpdateSecretVersionStage` twice (promote: AWSCURRENT to the new version, AWSPENDING off it; Secrets Manager moves AWSPREVIOUS by itself).
- **SSM 2**: the PAT and the webhook URL.
- **STS 1**: one `GetCallerIdentity` signed with the new key (`verify_consecutive = 1`).
- **ADO 4**: inspect finds the endpoint, push reads it (skip if it already holds the new key) and writes it in place (PUT: full object, same id), confirm reads it back (the new key id, `isReady`). Without resumability the floor would be 2 (find, PUT).
- **Slack 1**: one message per run.

Every call above the minimum, and the rule that needs it (read from the code at this commit; the operation counts are in the last column):

- **IAM +6 (10)**: `ListAccessKeys` ×5 more — create (room for a key under the two-key limit; the old key still there and Active), push, confirm and promote (`ensure_key_live`: the new key still exists and is Active right before each visible action, \"one IAM read per destructive or visible action\" of \"Safe among others\"), retire (the key that replaced the old one still Active, the old key's status); `GetAccessKeyLastUsed` ×1 — retire, right before the deactivation: IAM's last use of the old key after the push and the drain is the second signal that a consumer nobody listed still uses it. Last-used dates are fetched only where a decision uses them: inspect asks only about keys that no connection holds and no stage names (none in steady state), create only when recovering a lost `CreateAccessKey` answer.
- **Secrets Manager +8 (14)**: `DescribeSecret` ×2 more — create and promote re-read the labels right before they write (another run's intent or takeover since inspect); `GetSecretValue` ×5 more — inspect reads AWSPREVIOUS (the planner finishes a retirement or adopts a legacy value from it; AWSPENDING is read only when a version carries it), create reads AWSCURRENT to carry the fields other readers rely on into the new version and reads AWSPENDING back after its intent (a racing run), verify and push each read the new key from AWSPENDING (a step may run in a fresh process — the Lambda — and secrets never travel in the payload; push's read is also the ownership re-check); `UpdateSecretVersionStage` ×1 more — promote moves AWSPREVIOUS explicitly, which moto needs and real Secrets Manager does by itself.
- **ADO +2 (6)**: the organization-wide holder scan before the old key is deactivated (`GET projects`, then one listing per project): a connection nobody listed that still holds the old key keeps it Active. In a fleet the scan, the listing before the PUTs and confirm's listing serve every target of a batch (section 3); the minimum of 4 counts none of them as shared.

Every extra call is a read; the writes are the minimum (IAM 3, ADO 1 PUT, Secrets Manager 4 plus the explicit AWSPREVIOUS move).

Azure DevOps requests per step, one target (pinned by `one_rotation_spends_the_pinned_azure_devops_requests_per_step`, and for a batch by `a_batch_of_targets_shares_inspects_listing_and_spends_the_pinned_requests` and `a_fleet_in_two_projects_goes_in_batches_by_project_and_spends_the_pinned_requests`, crates/testkit/tests/protocol.rs):

| step | requests | what | in a batch of the CLI (up to 100 targets, one step at a time) |
|---|---|---|---|
| inspect | 1 | the project's listing | one listing per project serves every target for 10 s |
| push | 2 | a listing by `endpointIds` after the ownership re-checks, then the PUT of the object it read | one listing per project (50 ids a request) serves every push of the batch while it is at most 10 s old; a PUT per connection |
| confirm | 1 | a listing by `endpointIds`: the read-back, which the report reuses | one listing per project serves every confirm of the batch |
| retire | 2 | the holder scan: `GET projects`, one listing per project | one scan, made after every confirm of the batch, serves every retire |
| **total** | **6** | | 1 PUT per connection + about (3 + projects + 1) per batch and project |

The Step Functions path runs one target per execution and shares nothing between executions: 6 requests per target, 2 over the issue's target of 4. The 2 are the holder scan, which \"Safe among others\" keeps right before any deactivation (a scan from before the drain would miss a connection pointed at the old key during it). Endpoint ids travel in the payload, so no step resolves a name again.
";

const PEER_NOTES: &str = "The peer (bench/peer/peer.py) does what the old design did, nothing more: read the PAT and webhook URL from SSM, list the user's keys, create a key, `PutSecretValue`, delete the old key, find the service connection by name, DELETE it, POST it again with the new key (a new id: its pipeline authorizations, checks and history are gone — keyrotor's in-place PUT keeps them), and POST to the webhook. No propagation wait, no verification, no rollback. Its dependencies are pinned in bench/peer/requirements.txt and installed by `peer.py --setup` into `~/.cache/keyrotor/bench-peer-<hash>`.

The `azure-devops` SDK (7.1.0b4, the library the Azure CLI's DevOps extension is built on) cannot talk to the emulator as the CLI uses it (`Connection(...).clients_v7_1.get_service_endpoint_client()`). Before its first real request it discovers where the API lives: `Connection._get_resource_areas` asks the location service for `GET {org}/_apis/ResourceAreas`, and every client call first resolves its location id through `Client._get_resource_locations`, which sends `OPTIONS {org}/_apis` and reads the `ApiResourceLocation` list (route templates, min/max versions) to build the URL and negotiate the api-version. The emulator implements only the service-endpoint resources themselves: the SDK's very first request, `OPTIONS {org}/_apis` (the location service; even `GET _apis/ResourceAreas` is resolved through it), gets 404 and the SDK raises `AzureDevOpsServiceError: The resource '/contoso/_apis' does not exist or the API is not supported.` before any service-endpoint request. Authentication, URL shapes and api-version are not the problem: with discovery out of the way the SDK's requests are served normally.

So the peer is measured two ways: **requests** (the default, as the brief prefers) sends exactly the three requests the SDK's `ServiceEndpointClient` would send — `GET {org}/{project}/_apis/serviceendpoint/endpoints?endpointNames=…`, `DELETE {org}/_apis/serviceendpoint/endpoints/{id}?projectIds=…`, `POST {org}/_apis/serviceendpoint/endpoints`, with `Accept: application/json;api-version=7.1-preview.4`, Basic auth with the PAT and `X-TFS-FedAuthRedirect: Suppress` — with `requests`, and still imports the SDK as the old process did; **sdk-primed** uses the SDK's own `ServiceEndpointClient` (msrest serialization and all), constructed directly on the organization URL with its location cache primed with the two `ApiResourceLocation` records Azure DevOps serves for those resources. Both skip the two discovery round trips the real SDK makes on a cold cache (every run of the old container), so both flatter the peer slightly.
";

const TSTU_NOTES: &str = "
Why 1 TSTU per request: Microsoft does not publish per-request TSTU costs (a TSTU is a blend of the database and application-tier CPU a request uses); 1 is the emulator's smallest whole cost, the conventional reading of \"200 TSTUs ≈ 200 ordinary requests per 5 minutes\", and it is pessimistic for simple service-endpoint GETs and PUTs, which real Azure DevOps likely charges less. The delay stands in for Azure DevOps' \"delayed by a few hundred milliseconds up to 30 seconds\".

How keyrotor paces itself (crates/ado/src/pacing.rs): every request of a run goes through one client, and one pacing state shared by all of them. Once an answer comes back delayed (or with `X-RateLimit-Remaining: 0`) the client sends nothing until `X-RateLimit-Reset`, and then one request at a time until an answer comes back undelayed; after a 429 it sends nothing until the `Retry-After` has passed (up to 310 s, `AdoOptions::max_retry_after`). So it spends the undelayed budget at full speed, then waits for it to come back, and never pushes on towards the refusals. Waiting is bounded on its own — 15 minutes per request (`rate_limit_max_wait`), 5 refusals per request (`max_rate_limited_attempts`) — apart from the 5 attempts within 120 s that failures (5xx, timeouts) get.
";
