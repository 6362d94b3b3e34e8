//! `keyrotor-bench`: keyrotor's benchmarks. Run through `bench/run` (see bench/README.md), which
//! builds the binaries and passes their paths:
//!
//! ```text
//! keyrotor-bench all --keyrotor PATH [--bootstrap PATH] [--lambda-zip PATH] [--tiny]
//!                    [--only single,fleet,limited,lambda,scan] [--out FILE]
//! ```
//!
//! Benchmarks, not tests: nothing fails on speed. Each figure states its target and whether it
//! is met. The report is Markdown, written to `--out` (bench/RESULTS.md by default; `--tiny`
//! writes to a temporary file unless `--out` is given).

mod lambda;
mod measure;
mod report;
mod world;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use keyrotor_testkit::ado::RateLimit;
use keyrotor_testkit::moto::Moto;
use serde_json::{Value, json};

use crate::measure::{Runs, Stats, Usage, mib, ms};
use crate::report::Report;
use crate::world::{Calls, Options, World};

/// What to run, and how often.
#[derive(Debug, Clone)]
struct Plan {
    tiny: bool,
    keyrotor: PathBuf,
    bootstrap: Option<PathBuf>,
    /// The zip `scripts/package-lambda` made (what is deployed), when it was built.
    lambda_zip: Option<PathBuf>,
    /// The figures to run (`single`, `fleet`, `limited`, `lambda`, `scan`); all when empty.
    only: Vec<String>,
    out: PathBuf,
    /// Repeats of figure 1 (each tool) and of the cold starts.
    repeats: usize,
    /// Fleet sizes and their repeats.
    fleet: Vec<(usize, usize)>,
    concurrency: usize,
    /// Fleet sizes run with the ADO rate limit on.
    /// Rate-limited fleets: (targets, projects).
    limited: Vec<(usize, usize)>,
    rate_limit: RateLimit,
    /// Stops adding fleet sizes once a run took longer than this.
    fleet_budget: Duration,
    peer_dir: PathBuf,
}

/// The figures `--only` may name.
const FIGURES: [&str; 5] = ["single", "fleet", "limited", "lambda", "scan"];

impl Plan {
    /// Whether figure `name` runs.
    fn runs(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }
}

fn usage() -> &'static str {
    "usage: keyrotor-bench all --keyrotor PATH [--bootstrap PATH] [--lambda-zip PATH] [--tiny]\n\
     \x20      [--out FILE] [--only single,fleet,limited,lambda,scan] [--repeats N]\n\
     \x20      [--fleet 1:5,10:5,100:3,1000:1] [--limited 1000,1000x10] [--concurrency N]"
}

fn parse_args() -> Result<Plan> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("all") {
        bail!("{}", usage());
    }
    let get = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let tiny = args.iter().any(|a| a == "--tiny");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let keyrotor = PathBuf::from(get("--keyrotor").context(usage())?);
    let bootstrap = get("--bootstrap").map(PathBuf::from);
    let lambda_zip = get("--lambda-zip").map(PathBuf::from);
    let only: Vec<String> = get("--only")
        .map(|o| o.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    if let Some(bad) = only.iter().find(|o| !FIGURES.contains(&o.as_str())) {
        bail!(
            "--only {bad}: not one of {}\n{}",
            FIGURES.join(", "),
            usage()
        );
    }
    let out = match get("--out") {
        Some(o) => PathBuf::from(o),
        None if tiny => std::env::temp_dir().join("keyrotor-bench-tiny.md"),
        None => root.join("RESULTS.md"),
    };
    let repeats = match get("--repeats") {
        Some(n) => n.parse()?,
        None if tiny => 1,
        None => 10,
    };
    // `A,B,…`, each `N` or `N{sep}M` (M = 1 when left out).
    let pairs = |s: &str, sep: char| -> Result<Vec<(usize, usize)>> {
        s.split(',')
            .map(|p| {
                let (n, m) = p.split_once(sep).unwrap_or((p, "1"));
                Ok((n.parse()?, m.parse()?))
            })
            .collect()
    };
    // `N:R`: N targets, R repeats.
    let fleet = match get("--fleet") {
        Some(s) => pairs(&s, ':')?,
        None if tiny => vec![(1, 1), (3, 1)],
        None => vec![(1, 5), (10, 5), (100, 3), (1000, 3)],
    };
    // `N` or `NxP`: N targets spread over P projects.
    let limited = match get("--limited") {
        Some(s) => pairs(&s, 'x')?,
        None if tiny => vec![(3, 1), (4, 2)],
        // The issue's sizes: 1,000 targets in one project, and in ten.
        None => vec![(1000, 1), (1000, 10)],
    };
    let concurrency = get("--concurrency").map_or(Ok(4), |c| c.parse())?;
    // Azure DevOps' real budget: 200 TSTUs per sliding 5 minutes per identity; delayed past
    // it, blocked (429) at twice it. One request = 1 TSTU (see RESULTS.md for why). The tiny
    // run shrinks the budget (and the window, so it never waits minutes) such that its 3
    // targets still need several windows and the client's pacing runs.
    let rate_limit = if tiny {
        RateLimit {
            limit: 8,
            window_seconds: 1,
            cost_per_request: 1,
            block_at: Some(12),
            delay_ms: 10,
        }
    } else {
        // The real budget per window; the window shortened from 300 s to 30 s, so that a
        // 1,000-target run waits for the budget no more than the service would make it wait
        // in proportion (pacing follows the service's headers, whatever the window), and the
        // windows a run uses (its requests over the budget) do not depend on the window.
        RateLimit {
            limit: 200,
            window_seconds: 30,
            cost_per_request: 1,
            block_at: Some(400),
            delay_ms: 500,
        }
    };
    Ok(Plan {
        tiny,
        keyrotor,
        bootstrap,
        lambda_zip,
        only,
        out,
        repeats,
        fleet,
        concurrency,
        limited,
        rate_limit,
        fleet_budget: Duration::from_secs(if tiny { 60 } else { 900 }),
        peer_dir: root.join("peer"),
    })
}

fn main() -> Result<()> {
    if std::env::args().nth(1).as_deref() == Some("spawner") {
        return measure::spawner_main();
    }
    let plan = parse_args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(plan))
}

fn say(msg: &str) {
    eprintln!("bench: {msg}");
}

async fn run(plan: Plan) -> Result<()> {
    let started = Instant::now();
    let mut rep = Report::new(&plan.tiny);
    if !plan.only.is_empty() {
        rep.partial(&plan.only);
    }
    rep.machine(&plan.keyrotor, plan.bootstrap.as_deref());

    let peer_py = if plan.runs("single") || plan.runs("lambda") {
        say("setting up the peer's virtualenv (once)");
        peer_python(&plan.peer_dir)?
    } else {
        PathBuf::new()
    };

    say("starting moto (shared by every benchmark; reset between them)");
    let moto = Arc::new(Moto::start().context("moto must start (it is installed on first use)")?);

    if plan.runs("single") {
        say("figure 1: one rotation, keyrotor and the peer");
        figure1(&plan, &moto, &peer_py, &mut rep).await?;
    }

    if plan.runs("fleet") || plan.runs("limited") {
        say("figure 3: fleet scale");
        figure3(&plan, &moto, &mut rep).await?;
    }

    if plan.runs("lambda") {
        say("figure 4: artifact size and cold start");
        figure4(&plan, &moto, &peer_py, &mut rep).await?;
    }

    if plan.runs("scan") {
        say("figure 5: the holder scan of many projects");
        figure5(&plan, &moto, &mut rep).await?;
    }

    rep.footer(started.elapsed(), measure::spawner_floor());
    std::fs::write(&plan.out, rep.text())
        .with_context(|| format!("writing {}", plan.out.display()))?;
    say(&format!(
        "wrote {} in {:.1} s",
        plan.out.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// `python3 bench/peer/peer.py --setup`: the pinned virtualenv's python.
fn peer_python(peer_dir: &Path) -> Result<PathBuf> {
    let out = Command::new("python3")
        .arg(peer_dir.join("peer.py"))
        .arg("--setup")
        .output()
        .context("running python3 bench/peer/peer.py --setup")?;
    if !out.status.success() {
        bail!(
            "peer setup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let py = String::from_utf8(out.stdout)?.trim().to_owned();
    Ok(PathBuf::from(py))
}

/// One measured peer run against `w`'s first target.
async fn peer_run(
    w: &World,
    py: &Path,
    peer_dir: &Path,
    mode: &str,
    tag: &str,
) -> Result<(Usage, Value)> {
    let t = &w.targets[0];
    let out = w.dir.join(format!("{tag}.stdout.json"));
    let err = w.dir.join(format!("{tag}.stderr.log"));
    let mut cmd = Command::new(py);
    cmd.arg(peer_dir.join("peer.py"))
        .args(["--org-url", &w.ado.org_url(world::ORG)])
        .args(["--project", world::PROJECT, "--endpoint", &t.endpoint])
        .args(["--user", &t.user, "--secret", &t.secret])
        .args([
            "--pat-param",
            world::PAT_PARAM,
            "--webhook-param",
            world::WEBHOOK_PARAM,
        ])
        .args(["--ado", mode]);
    w.child_env(&mut cmd);
    let u = measure::run(cmd, &out, &err).await?;
    let doc: Value = std::fs::read_to_string(&out)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null);
    if u.code != 0 || doc.is_null() {
        let log = std::fs::read_to_string(&err).unwrap_or_default();
        let last: Vec<&str> = log.lines().rev().take(3).collect();
        return Ok((u, json!({"error": last.join(" | ")})));
    }
    Ok((u, doc))
}

/// The result of one tool's repeated single rotations.
pub struct Single {
    pub name: String,
    pub runs: Runs,
    /// Calls of each run (they should be equal; the report shows min–max when not).
    pub calls: Vec<Calls>,
    pub ok: usize,
    pub note: String,
}

impl Single {
    /// No runs yet, under `name`.
    fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            runs: Runs::default(),
            calls: Vec::new(),
            ok: 0,
            note: String::new(),
        }
    }
}

async fn figure1(plan: &Plan, moto: &Arc<Moto>, peer_py: &Path, rep: &mut Report) -> Result<()> {
    let opts = Options {
        targets: 1,
        projects: 1,
        concurrency: plan.concurrency,
    };
    // keyrotor: one warm-up (page cache, moto's first-request imports), then `repeats`.
    let w = World::start(&opts, moto).await?;
    let warm = !plan.tiny;
    if warm {
        w.rotate(&plan.keyrotor, "warmup").await?;
    }
    let mut k = Single::named("keyrotor");
    for i in 0..plan.repeats {
        let m = w.mark();
        let (u, doc) = w.rotate(&plan.keyrotor, &format!("single-{i}")).await?;
        k.calls.push(w.calls_since(m));
        if u.code == 0 && world::outcomes(&doc).get("rotated") == Some(&1) {
            k.ok += 1;
        } else {
            k.note = format!("exit {}; outcomes {:?}", u.code, world::outcomes(&doc));
        }
        k.runs.push(u);
    }
    let ep_id_before = w
        .ado
        .state()
        .organizations
        .values()
        .flat_map(|o| o.endpoints.clone())
        .next()
        .map(|e| e["id"].clone());
    w.stop().await;
    let _ = ep_id_before;

    let mut peers = Vec::new();
    let modes: &[&str] = if plan.tiny {
        &["requests"]
    } else {
        &["requests", "sdk-primed"]
    };
    for mode in modes {
        let w = World::start(&opts, moto).await?;
        if warm {
            peer_run(&w, peer_py, &plan.peer_dir, mode, "warmup").await?;
        }
        let mut p = Single::named(format!("peer ({mode})"));
        for i in 0..plan.repeats {
            let m = w.mark();
            let (u, doc) =
                peer_run(&w, peer_py, &plan.peer_dir, mode, &format!("peer-{i}")).await?;
            p.calls.push(w.calls_since(m));
            if u.code == 0 && doc["new_endpoint_id"].is_string() {
                p.ok += 1;
                if doc["new_endpoint_id"] != doc["old_endpoint_id"] {
                    p.note = "the endpoint's id changes on every run (delete + create): pipeline authorizations are lost".into();
                }
            } else {
                p.note = format!("exit {}: {}", u.code, doc["error"]);
            }
            p.runs.push(u);
        }
        w.stop().await;
        peers.push(p);
    }

    // The SDK as the Azure CLI uses it (with discovery), once, to record how it fails.
    let w = World::start(&opts, moto).await?;
    let m = w.mark();
    let (u, doc) = peer_run(&w, peer_py, &plan.peer_dir, "sdk", "probe").await?;
    let probe = w.calls_since(m);
    let probe_log: Vec<String> = w
        .ado
        .requests()
        .into_iter()
        .map(|r| {
            format!(
                "{} {}{} → {}",
                r.method,
                r.path,
                r.query.map(|q| format!("?{q}")).unwrap_or_default(),
                r.status
            )
        })
        .collect();
    w.stop().await;

    rep.figure1(&k, &peers, warm, plan.concurrency);
    rep.sdk_probe(u.code, &doc, &probe, &probe_log);
    Ok(())
}

/// One fleet measurement.
pub struct FleetRow {
    pub targets: usize,
    /// Projects the targets are spread over.
    pub projects: usize,
    pub runs: Runs,
    pub seed_time: Duration,
    pub outcomes: BTreeMap<String, usize>,
    pub failures: BTreeMap<String, usize>,
    pub calls: Calls,
    pub limited: bool,
}

async fn fleet_once(
    plan: &Plan,
    moto: &Arc<Moto>,
    (n, projects): (usize, usize),
    repeats: usize,
    limit: Option<&RateLimit>,
) -> Result<FleetRow> {
    let w = World::start(
        &Options {
            targets: n,
            projects,
            concurrency: plan.concurrency,
        },
        moto,
    )
    .await?;
    say(&format!(
        "  {n} targets in {projects} project(s) seeded in {:.1} s{}",
        w.seed_time.as_secs_f64(),
        if limit.is_some() {
            " (rate limit on)"
        } else {
            ""
        }
    ));
    if let Some(rl) = limit {
        w.rate_limit(rl.clone());
    }
    let mut row = FleetRow {
        targets: n,
        projects,
        runs: Runs::default(),
        seed_time: w.seed_time,
        outcomes: BTreeMap::new(),
        failures: BTreeMap::new(),
        calls: Calls::default(),
        limited: limit.is_some(),
    };
    for i in 0..repeats {
        let m = w.mark();
        let (u, doc) = w.rotate(&plan.keyrotor, &format!("fleet-{n}-{i}")).await?;
        say(&format!(
            "  {n} targets: run {} took {:.1} s, peak RSS {:.1} MiB, outcomes {:?}",
            i + 1,
            u.wall.as_secs_f64(),
            mib(u.max_rss),
            world::outcomes(&doc)
        ));
        row.calls = w.calls_since(m);
        for (k, v) in world::outcomes(&doc) {
            *row.outcomes.entry(k).or_default() += v;
        }
        for (k, v) in world::failures(&doc) {
            *row.failures.entry(k).or_default() += v;
        }
        if doc.is_null() {
            *row.outcomes
                .entry(format!("no JSON (exit {})", u.code))
                .or_default() += 1;
        }
        row.runs.push(u);
    }
    w.stop().await;
    Ok(row)
}

async fn figure3(plan: &Plan, moto: &Arc<Moto>, rep: &mut Report) -> Result<()> {
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    let fleet: &[(usize, usize)] = if plan.runs("fleet") { &plan.fleet } else { &[] };
    for &(n, repeats) in fleet {
        if let Some(last) = rows.last() {
            let last: &FleetRow = last;
            // Skip what would clearly blow the budget: time grows about linearly.
            let est = last.runs.wall_ms().median / 1000.0 * (n as f64 / last.targets as f64);
            if est * repeats as f64 > plan.fleet_budget.as_secs_f64() {
                skipped.push((n, est));
                continue;
            }
        }
        rows.push(fleet_once(plan, moto, (n, 1), repeats, None).await?);
    }
    let mut limited = Vec::new();
    let sizes: &[(usize, usize)] = if plan.runs("limited") {
        &plan.limited
    } else {
        &[]
    };
    for &size in sizes {
        limited.push(fleet_once(plan, moto, size, 1, Some(&plan.rate_limit)).await?);
    }
    rep.figure3(
        &rows,
        &skipped,
        &limited,
        plan.concurrency,
        &plan.rate_limit,
    );
    Ok(())
}

/// Cold-start measurements of one runtime.
pub struct Cold {
    pub name: String,
    pub to_next_ms: Vec<f64>,
    pub to_response_ms: Vec<f64>,
    pub runs: Runs,
    pub note: String,
}

async fn figure4(plan: &Plan, moto: &Arc<Moto>, peer_py: &Path, rep: &mut Report) -> Result<()> {
    let Some(bootstrap) = plan.bootstrap.as_ref().filter(|b| b.exists()) else {
        rep.figure4(
            None,
            None,
            None,
            None,
            "the `bootstrap` binary was not built",
        );
        return Ok(());
    };
    let zip = lambda::zip_size(bootstrap, &std::env::temp_dir()).ok();
    let release = bootstrap.to_string_lossy().contains("/release/");
    let bin_size = std::fs::metadata(bootstrap)?.len();
    // What `scripts/package-lambda` wrote: `<dir>/bootstrap.zip` beside `<dir>/bootstrap`.
    let packaged = plan.lambda_zip.as_ref().and_then(|z| {
        let zip = std::fs::metadata(z).ok()?.len();
        let bin = std::fs::metadata(z.with_file_name("bootstrap")).ok()?.len();
        Some(report::Packaged { bin, zip })
    });

    let w = World::start(
        &Options {
            targets: 1,
            projects: 1,
            concurrency: plan.concurrency,
        },
        moto,
    )
    .await?;
    let mut boot = Cold {
        name: "keyrotor `bootstrap`".into(),
        to_next_ms: vec![],
        to_response_ms: vec![],
        runs: Runs::default(),
        note: String::new(),
    };
    let mut py = Cold {
        name: "Python 3 (boto3 + azure.devops)".into(),
        to_next_ms: vec![],
        to_response_ms: vec![],
        runs: Runs::default(),
        note: String::new(),
    };
    for i in 0..plan.repeats {
        match cold_bootstrap(&w, bootstrap, i, &mut boot).await {
            Ok(()) => {}
            Err(e) => boot.note = format!("{e:#}"),
        }
        match cold_python(&w, peer_py, &plan.peer_dir, &mut py).await {
            Ok(()) => {}
            Err(e) => py.note = format!("{e:#}"),
        }
    }
    w.stop().await;
    rep.figure4(
        Some((bin_size, zip, release)),
        packaged,
        Some(&boot),
        Some(&py),
        "",
    );
    Ok(())
}

fn lambda_env(w: &World, cmd: &mut Command, api: &lambda::RuntimeApi) {
    w.child_env(cmd);
    cmd.env("AWS_LAMBDA_RUNTIME_API", api.address())
        .env("AWS_LAMBDA_FUNCTION_NAME", "keyrotor-bench")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/keyrotor-bench")
        .env("KEYROTOR_CONFIG_PARAMETER", world::CONFIG_PARAM);
}

/// Exec → first `next` → first response (the `targets` step), then the whole step sequence of
/// one rotation; then SIGKILL and `wait4` for the peak RSS.
async fn cold_bootstrap(w: &World, bootstrap: &Path, i: usize, c: &mut Cold) -> Result<()> {
    let mut api = lambda::RuntimeApi::start().await?;
    // As the state machine sends it: the execution's name is the run id.
    api.invoke(
        json!({"step": "targets", "run_id": format!("bench-cold-{i}"), "input": {"force": true}}),
    );
    let mut cmd = Command::new(bootstrap);
    lambda_env(w, &mut cmd, &api);
    let running = measure::Running::spawn(
        &mut cmd,
        &w.dir.join(format!("bootstrap-{i}.log")),
        &w.dir.join(format!("bootstrap-{i}.err")),
    )?;
    let t0 = running.started();
    let first = api.answer(Duration::from_secs(30)).await;
    let sequence = async {
        let first = first?;
        let next_at = api.first_next().context("no GET next")?;
        if let Err(e) = &first.result {
            bail!("the targets step failed: {e}");
        }
        let (to_next, to_resp) = (ms(next_at - t0), ms(first.at - t0));
        // Then the target's steps as the state machine runs them: each the step its state
        // names as next, until done.
        let run_id = format!("bench-cold-{i}");
        let mut state = first
            .result
            .as_ref()
            .map_or(Value::Null, |v| v["targets"][0].clone());
        let mut tries = 0;
        while let Some(step) = state["next"]
            .as_str()
            .filter(|s| *s != "done")
            .map(str::to_owned)
        {
            let a = api
                .call(
                    json!({"step": step, "state": state}),
                    Duration::from_secs(60),
                )
                .await?;
            match a.result {
                Ok(v) => state = v,
                Err(e)
                    if step == "verify"
                        && tries < 20
                        && e["errorType"] == "Rotation.NotPropagated" =>
                {
                    tries += 1;
                }
                Err(e) => bail!("{step} failed: {e}"),
            }
        }
        let a = api
            .call(
                json!({"step": "report", "run_id": run_id, "results": [{"state": state}]}),
                Duration::from_secs(60),
            )
            .await?;
        if let Err(e) = a.result {
            bail!("report failed: {e}");
        }
        if state["outcome"] != "rotated" {
            bail!("the sequence ended with {}", state["outcome"]);
        }
        Ok((to_next, to_resp))
    }
    .await;
    running.kill();
    let u = tokio::task::spawn_blocking(move || running.wait()).await??;
    let (to_next, to_resp) = sequence?;
    c.to_next_ms.push(to_next);
    c.to_response_ms.push(to_resp);
    c.runs.push(u);
    Ok(())
}

async fn cold_python(w: &World, py: &Path, peer_dir: &Path, c: &mut Cold) -> Result<()> {
    let mut api = lambda::RuntimeApi::start().await?;
    api.invoke(json!({"step": "targets", "input": {}}));
    let mut cmd = Command::new(py);
    cmd.arg(peer_dir.join("lambda_handler.py"));
    lambda_env(w, &mut cmd, &api);
    let running = measure::Running::spawn(
        &mut cmd,
        &w.dir.join("py-lambda.log"),
        &w.dir.join("py-lambda.err"),
    )?;
    let t0 = running.started();
    let first = api.answer(Duration::from_secs(60)).await;
    let next_at = api.first_next();
    running.kill();
    let u = tokio::task::spawn_blocking(move || running.wait()).await??;
    let first = first?;
    if let Err(e) = first.result {
        bail!("the Python handler failed: {e}");
    }
    c.to_next_ms.push(ms(next_at.context("no GET next")? - t0));
    c.to_response_ms.push(ms(first.at - t0));
    c.runs.push(u);
    Ok(())
}

/// `Stats` of a slice (for the report).
pub fn stats(v: &[f64]) -> Stats {
    Stats::of(v)
}

/// Figure 5: the organization-wide holder scan, timed.
pub struct ScanRow {
    pub projects: usize,
    /// How long the emulator holds every request.
    pub delay_ms: u64,
    pub runs: Runs,
    /// Azure DevOps requests of one scan.
    pub requests: usize,
    /// The most requests the emulator served at once, over all runs.
    pub peak: usize,
}

/// Figure 5: `keyrotor audit` (the holder scan retire, make-room and compensation make before a
/// key is deactivated or deleted: `GET projects`, then one listing per project) of an
/// organization of 300 projects, each request held 150 ms by the emulator, as a distant or busy
/// Azure DevOps answers. Every connection uses OIDC, so that the audit asks IAM nothing and its
/// time is the scan's.
async fn figure5(plan: &Plan, moto: &Arc<Moto>, rep: &mut Report) -> Result<()> {
    use keyrotor_testkit::ado::{AdoEmulator, Fault, Op, OrgSeed, Scope, Seed, aws_endpoint};
    let (projects, delay_ms, repeats) = if plan.tiny {
        (40, 20, 1)
    } else {
        (300, 150, 3)
    };
    let mut org = OrgSeed::new(world::ORG).pat(world::PAT, Scope::Manage);
    for p in 0..projects {
        let project = world::project_name(p);
        let mut ep = aws_endpoint(&format!("aws-{p:03}"), "", "", &[project.as_str()]);
        keyrotor_testkit::env::on_oidc(&mut ep);
        org = org.project(&project).endpoint(ep);
    }
    let ado = AdoEmulator::start(Seed::new().org(org)).await?;
    ado.inject(Fault::delay(Op::Any, delay_ms).forever());
    let dir = std::env::temp_dir().join(format!("keyrotor-bench-scan-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let mut row = ScanRow {
        projects,
        delay_ms,
        runs: Runs::default(),
        requests: 0,
        peak: 0,
    };
    for i in 0..repeats {
        ado.clear_requests();
        ado.reset_peak_in_flight();
        let mut cmd = Command::new(&plan.keyrotor);
        cmd.args(["audit", "--organization", &ado.org_url(world::ORG)])
            .args(["--pat", "env:KEYROTOR_BENCH_PAT", "--output", "json"])
            .env_clear();
        for (k, v) in moto.env() {
            cmd.env(k, v);
        }
        cmd.env("AWS_ENDPOINT_URL", &moto.endpoint)
            .env("KEYROTOR_BENCH_PAT", world::PAT)
            .env("HOME", &dir)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .current_dir(&dir)
            .stdin(std::process::Stdio::null());
        let u = measure::run(
            cmd,
            &dir.join(format!("scan-{i}.json")),
            &dir.join(format!("scan-{i}.log")),
        )
        .await?;
        let listed = std::fs::read_to_string(dir.join(format!("scan-{i}.json")))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|d| d["connections"].as_array().map(Vec::len));
        say(&format!(
            "  {projects} projects at {delay_ms} ms a request: run {} took {:.2} s (exit {}, {} connections listed, at most {} requests at once)",
            i + 1,
            u.wall.as_secs_f64(),
            u.code,
            listed.map_or("?".to_owned(), |n| n.to_string()),
            ado.peak_in_flight()
        ));
        if u.code != 0 {
            bail!("keyrotor audit exited {} (see {})", u.code, dir.display());
        }
        row.requests = ado.requests().len();
        row.peak = row.peak.max(ado.peak_in_flight());
        row.runs.push(u);
    }
    ado.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    rep.figure5(&row);
    Ok(())
}
