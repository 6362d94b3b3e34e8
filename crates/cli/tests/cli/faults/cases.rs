//! The cases of the matrix (which fault, at which step, what must follow) and how one is run and
//! checked.

use std::sync::Arc;
use std::time::Duration;

use keyrotor_testkit::ado::{Fault as AdoFault, Op};
use keyrotor_testkit::aws_proxy::{Fault as AwsFault, FaultKind};
use keyrotor_testkit::env::{EP_ID, Output, TestEnv as Env, all_text};
use keyrotor_testkit::moto::Moto;

/// Every run must end within this (a bound, not a wait). The slowest legitimate run is a
/// permanent fault on the key's `PutSecretValue`: 4 tries by keyrotor × 5 SDK attempts with the
/// SDK's exponential backoff (up to 1 + 2 + 4 + 8 s per call) ≈ 61 s at worst, plus the rest.
pub const RUN_BOUND: Duration = Duration::from_secs(120);

/// The SDK's retry bound (keyrotor-aws: standard retry mode, 5 attempts).
pub const MAX_ATTEMPTS_PER_CALL: usize = 5;

/// The Azure DevOps client's retry bound (keyrotor-ado: 5 attempts per request).
const ADO_ATTEMPTS: usize = 5;

/// Small verification settings, so a permanent STS fault ends in seconds (and long enough for
/// the strict mode's new-key delay).
const VERIFY_INTERVAL_MS: u64 = 50;
const VERIFY_TIMEOUT_MS: u64 = 3000;

/// Where a fault goes.
#[derive(Debug, Clone)]
pub enum Inject {
    /// Into the AWS proxy.
    Aws(AwsFault),
    /// Into the Azure DevOps emulator, after `skip` requests of `op` went through untouched.
    Ado { op: Op, skip: u32, fault: AdoFault },
}

/// What must follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Exit 0, `rotated`, converged.
    Rotated,
    /// Exit `code`, failed at `step`; `notified`: the Slack post names the step.
    Fails {
        code: i32,
        step: &'static str,
        notified: bool,
    },
}

#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub inject: Inject,
    pub expect: Expect,
}

/// A step's AWS operation: the name, how many of its requests come before the step's, the step.
struct AwsTarget {
    op: &'static str,
    skip: u32,
    step: &'static str,
}

const fn aws(op: &'static str, skip: u32, step: &'static str) -> AwsTarget {
    AwsTarget { op, skip, step }
}

/// Every AWS operation of a rotation, at the step that calls it. `skip` counts the requests of
/// the same operation made before (a rotation of a user with one key and a JSON secret):
/// `prepare` reads the PAT and the webhook from SSM; inspect lists the keys (no last use: every
/// key is held by the connection or named by a stage) and reads the secret's labelled stages;
/// create lists them again, writes the intent record, creates the key and stores it; verify
/// calls STS with the new key; promote describes the secret and moves the labels; retire lists
/// the keys, asks IAM when the old key was last used, deactivates and deletes it.
fn aws_targets() -> Vec<AwsTarget> {
    vec![
        aws("GetParameter", 0, "prepare"),
        aws("ListAccessKeys", 0, "inspect"),
        aws("DescribeSecret", 0, "inspect"),
        aws("GetSecretValue", 0, "inspect"),
        aws("ListAccessKeys", 1, "create"),
        aws("CreateAccessKey", 0, "create"),
        aws("PutSecretValue", 0, "create"),
        aws("PutSecretValue", 1, "create"),
        aws("GetCallerIdentity", 0, "verify"),
        aws("DescribeSecret", 2, "promote"),
        aws("UpdateSecretVersionStage", 0, "promote"),
        // Push, confirm and promote each list keys first (is the new key still Active?).
        aws("ListAccessKeys", 2, "push"),
        aws("ListAccessKeys", 5, "retire"),
        aws("GetAccessKeyLastUsed", 0, "retire"),
        aws("UpdateAccessKey", 0, "retire"),
        aws("DeleteAccessKey", 0, "retire"),
    ]
}

/// The same for Azure DevOps: inspect finds the endpoint by name in both projects (2 lists);
/// push finds it again (2), reads it and PUTs it; confirm finds it (2) and reads it back;
/// retire finds it (2) to make sure no connection holds the old key.
fn ado_targets() -> Vec<(Op, u32, &'static str)> {
    vec![
        // The default connection is shared into Platform and Web and configured in both:
        // inspect lists each project once (#1, #2); push lists it by id (#3) and PUTs the
        // object that listing read; confirm lists it by id (#4); retire lists the projects (#5)
        // and each project (#6, #7). No connection is read on its own (no GET by id).
        (Op::List, 0, "inspect"),
        (Op::List, 2, "push"),
        (Op::Put, 0, "push"),
        (Op::List, 3, "confirm"),
        (Op::List, 4, "retire"),
    ]
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::List => "GET list",
        Op::Get => "GET",
        Op::Put => "PUT",
        _ => "other",
    }
}

fn aws_case(t: &AwsTarget, kind: FaultKind, n: Option<u32>) -> Case {
    let mut f = AwsFault::new(t.op, kind).after(t.skip);
    f = match n {
        Some(n) => f.times(n),
        None => f.forever(),
    };
    let nth = if t.skip > 0 {
        format!(" #{}", t.skip + 1)
    } else {
        String::new()
    };
    let count = n.map_or_else(|| "forever".to_owned(), |n| format!("x{n}"));
    let expect = match (n, t.step) {
        (Some(_), _) => Expect::Rotated,
        (None, "prepare") => Expect::Fails {
            code: 2,
            step: "prepare",
            notified: false,
        },
        (None, step) => Expect::Fails {
            code: 1,
            step,
            notified: true,
        },
    };
    Case {
        name: format!("{}: {}{nth} {} {count}", t.step, t.op, kind.name()),
        inject: Inject::Aws(f),
        expect,
    }
}

/// An Azure DevOps fault: `status` (429 with `Retry-After: 1`, 5xx, 203 sign-in page).
fn ado_case(op: Op, skip: u32, step: &'static str, status: u16, n: Option<u32>) -> Case {
    let mut f = match status {
        203 => AdoFault::sign_in_page(op),
        429 => AdoFault::status(op, 429).retry_after(1),
        s => AdoFault::status(op, s),
    };
    f = match n {
        Some(n) => f.times(n),
        None => f.forever(),
    };
    let nth = if skip > 0 {
        format!(" #{}", skip + 1)
    } else {
        String::new()
    };
    let count = n.map_or_else(|| "forever".to_owned(), |n| format!("x{n}"));
    // A sign-in page is never retried: one is a refused PAT. At inspect that is bad input (2).
    let expect = match (status, n) {
        (203, _) => Expect::Fails {
            code: if step == "inspect" { 2 } else { 1 },
            step,
            notified: true,
        },
        (_, Some(_)) => Expect::Rotated,
        (_, None) => Expect::Fails {
            code: 1,
            step,
            notified: true,
        },
    };
    Case {
        name: format!("{step}: ADO {}{nth} {status} {count}", op_name(op)),
        inject: Inject::Ado { op, skip, fault: f },
        expect,
    }
}

const SLOW: FaultKind = FaultKind::Slow { ms: 500 };

/// Every fault kind at every operation of every step.
pub fn full() -> Vec<Case> {
    let mut out = Vec::new();
    for t in aws_targets() {
        for kind in [
            FaultKind::Throttle,
            FaultKind::InternalError,
            FaultKind::Unavailable,
            FaultKind::Drop,
            SLOW,
        ] {
            out.push(aws_case(&t, kind, Some(2)));
        }
        if matches!(
            t.op,
            "CreateAccessKey"
                | "PutSecretValue"
                | "UpdateSecretVersionStage"
                | "UpdateAccessKey"
                | "DeleteAccessKey"
        ) {
            out.push(aws_case(&t, FaultKind::ResponseLost, Some(1)));
        }
        for kind in [
            FaultKind::Throttle,
            FaultKind::InternalError,
            FaultKind::Unavailable,
            FaultKind::Drop,
        ] {
            out.push(aws_case(&t, kind, None));
        }
    }
    for (op, skip, step) in ado_targets() {
        for status in [429, 500, 503] {
            out.push(ado_case(op, skip, step, status, Some(2)));
        }
        for status in [429, 503] {
            out.push(ado_case(op, skip, step, status, None));
        }
        out.push(ado_case(op, skip, step, 203, Some(1)));
    }
    out
}

/// A representative sample for every `cargo test`: at each step, one fault that ends and one
/// that does not (cases of the full matrix, by name).
const SAMPLE: [&str; 20] = [
    "prepare: GetParameter throttle x2",
    "prepare: GetParameter 503 forever",
    "inspect: ListAccessKeys throttle x2",
    "inspect: GetSecretValue 503 forever",
    "inspect: ADO GET list 429 x2",
    "inspect: ADO GET list 203 x1",
    "create: CreateAccessKey drop x2",
    "create: PutSecretValue #2 503 x2",
    "create: CreateAccessKey 500 forever",
    "create: CreateAccessKey response-lost x1",
    "verify: GetCallerIdentity throttle x2",
    "verify: GetCallerIdentity 503 forever",
    "push: ADO PUT 503 x2",
    "push: ADO PUT 429 forever",
    "confirm: ADO GET list #4 500 x2",
    "confirm: ADO GET list #4 503 forever",
    "promote: UpdateSecretVersionStage throttle x2",
    "promote: UpdateSecretVersionStage 500 forever",
    "retire: UpdateAccessKey drop x2",
    "retire: DeleteAccessKey throttle forever",
];

/// The sample.
pub fn sample() -> Vec<Case> {
    named(&SAMPLE)
}

/// These cases of the full matrix, by name.
pub fn named(names: &[&str]) -> Vec<Case> {
    let all = full();
    names
        .iter()
        .map(|n| {
            all.iter()
                .find(|c| c.name == *n)
                .cloned()
                .unwrap_or_else(|| panic!("no case named {n:?}"))
        })
        .collect()
}

/// The Azure DevOps requests of `op` in the emulator's log, and how many got an injected answer.
fn ado_requests(env: &Env, op: Op) -> (usize, usize) {
    let is = |r: &keyrotor_testkit::ado::RequestRecord| {
        let lower = r.path.to_lowercase();
        let id = lower.ends_with(&EP_ID.to_lowercase());
        match op {
            Op::List => r.method == "GET" && lower.ends_with("/serviceendpoint/endpoints"),
            Op::Get => r.method == "GET" && id,
            Op::Put => r.method == "PUT" && id,
            _ => false,
        }
    };
    let reqs: Vec<_> = env.ado.requests().into_iter().filter(is).collect();
    let bad = reqs
        .iter()
        .filter(|r| r.status == 203 || r.status == 429 || r.status >= 500)
        .count();
    (reqs.len(), bad)
}

/// Checks that hold after every run: the time bound, the SDK's retry bound, the invariants that
/// hold at every instant, no secret in any output.
async fn after_any_run(
    env: &Env,
    o: &Output,
    what: &str,
) -> Result<keyrotor_core::invariants::World, String> {
    if o.elapsed > RUN_BOUND {
        return Err(format!(
            "{what}: the run took {:.1} s, more than the bound {RUN_BOUND:?}\n{}",
            o.elapsed.as_secs_f64(),
            o.show()
        ));
    }
    let most = env.proxy().max_attempts_per_call();
    if most > MAX_ATTEMPTS_PER_CALL {
        return Err(format!(
            "{what}: an SDK call made {most} attempts (bound {MAX_ATTEMPTS_PER_CALL}): {:?}",
            env.proxy().counts()
        ));
    }
    let world = env.world().await;
    world
        .always()
        .map_err(|e| format!("{what}: invariant broken: {e}\n{world:#?}\n{}", o.show()))?;
    // No secret in any output: `TestEnv::run` scanned every output of the case so far (stdout,
    // stderr at trace level, every Slack post) for every secret involved, and panics on a leak.
    Ok(world)
}

/// Runs one case against a freshly seeded world around `moto`: the faulted run, its checks, then
/// a fault-free run that must converge. Returns the summary line.
pub async fn run_case(case: &Case, moto: &Arc<Moto>) -> Result<String, String> {
    let env = crate::setup()
        .moto(moto.clone())
        .policy(&format!("verify_interval = \"{VERIFY_INTERVAL_MS}ms\""))
        .policy(&format!("verify_timeout = \"{VERIFY_TIMEOUT_MS}ms\""))
        .start()
        .await;
    let r = check_case(case, &env).await;
    env.stop().await;
    r
}

/// `keyrotor rotate --force --output json`, AWS reached through the proxy.
async fn rotate(env: &Env) -> Output {
    env.run(&["rotate", "--force", "--output", "json"]).await
}

async fn check_case(case: &Case, env: &Env) -> Result<String, String> {
    let op_label;
    match &case.inject {
        Inject::Aws(f) => {
            op_label = f.op.clone();
            env.proxy().inject(f.clone());
        }
        Inject::Ado { op, skip, fault } => {
            op_label = format!("ADO {}", op_name(*op));
            if *skip > 0 {
                // Passes the first `skip` requests through untouched (faults apply in order).
                env.ado.inject(AdoFault::delay(*op, 0).times(*skip));
            }
            env.ado.inject(fault.clone());
        }
    }

    let o = rotate(env).await;
    let world = after_any_run(env, &o, "faulted run").await?;
    let outcome = o.outcome();
    let failed_step = o.failed_step();

    // Retries are bounded: per SDK call by the SDK; calls by the step.
    let (calls, attempts, faulted) = match &case.inject {
        Inject::Aws(f) => {
            let per_call = env.proxy().attempts_per_call(&f.op);
            let max_calls = if f.op == "GetCallerIdentity" {
                (VERIFY_TIMEOUT_MS / VERIFY_INTERVAL_MS) as usize + 2
            } else {
                12
            };
            if per_call.len() > max_calls {
                return Err(format!(
                    "{} SDK calls of {} (bound {max_calls}): {per_call:?}",
                    per_call.len(),
                    f.op
                ));
            }
            (
                per_call.len(),
                per_call.iter().sum::<usize>(),
                env.proxy().faulted(&f.op),
            )
        }
        Inject::Ado { op, .. } => {
            let (n, bad) = ado_requests(env, *op);
            // At most these meet the fault, each retried within the client's bound: the step's
            // call, compensation's read of the connections, the report's read, and
            // compensation's holder scan, whose listings, one per project (Platform and Web
            // here), go at once (`keyrotor_ado::SCAN_CONCURRENCY` at a time).
            let scan_listings = 2;
            let bound = (3 + scan_listings) * ADO_ATTEMPTS;
            if bad > bound {
                return Err(format!(
                    "{bad} faulted Azure DevOps requests of {op_label} (bound {bound}):\n{}",
                    o.show()
                ));
            }
            (0, n, bad)
        }
    };

    match case.expect {
        Expect::Rotated => {
            if o.code != 0 || outcome != "rotated" {
                return Err(format!("expected exit 0 and rotated\n{}", o.show()));
            }
            world
                .after_success()
                .map_err(|e| format!("not converged after success: {e}\n{world:#?}"))?;
        }
        Expect::Fails {
            code,
            step,
            notified,
        } => {
            if o.code != code {
                return Err(format!("expected exit {code}\n{}", o.show()));
            }
            if step != "prepare" && failed_step.as_deref() != Some(step) {
                return Err(format!(
                    "expected the run to fail at {step}, not {failed_step:?}\n{}",
                    o.show()
                ));
            }
            if step == "prepare" && !o.stdout.trim().is_empty() {
                return Err(format!(
                    "a failure to prepare prints no report\n{}",
                    o.show()
                ));
            }
            if matches!(
                step,
                "prepare" | "inspect" | "cleanup" | "create" | "verify" | "push"
            ) {
                // Nothing that pipelines use changed: the old key, Active, held by the endpoint
                // with its secret; no new key; no AWSPENDING.
                let ok = world.keys.len() == 1
                    && world.keys[0].id == env.initial_key
                    && world.keys[0].active
                    && world.endpoints.iter().all(|e| {
                        e.username.as_deref() == Some(env.initial_key.as_str())
                            && e.password.as_deref() == Some(env.initial_secret.as_str())
                    })
                    && !world.stages.contains_key("AWSPENDING");
                if !ok {
                    return Err(format!(
                        "a failure before push must leave the old key Active and held, no new \
                         key, no AWSPENDING:\n{world:#?}\n{}",
                        o.show()
                    ));
                }
            }
            let posts = env.posts();
            if notified {
                let text = posts
                    .iter()
                    .filter_map(|p| p.json.as_ref())
                    .map(all_text)
                    .collect::<Vec<_>>()
                    .join("\n");
                if posts.len() != 1 || !text.contains(step) {
                    return Err(format!(
                        "expected one Slack post naming step {step}, got {} posts:\n{text}",
                        posts.len()
                    ));
                }
            } else if !posts.is_empty() {
                return Err(format!("expected no Slack post, got {}", posts.len()));
            }
        }
    }

    // Then, without faults, a rotation converges.
    env.proxy().clear_faults();
    env.proxy().clear_seen();
    env.ado.clear_faults();
    let last = rotate(env).await;
    let world = after_any_run(env, &last, "final fault-free run").await?;
    if last.code != 0 || last.outcome() != "rotated" {
        return Err(format!(
            "the fault-free rotation after the fault did not rotate\nfaulted run: {}\n\nfinal run: {}",
            o.show(),
            last.show()
        ));
    }
    world.after_success().map_err(|e| {
        format!(
            "the fault-free rotation did not converge: {e}\n{world:#?}\n{}",
            last.show()
        )
    })?;

    let step = failed_step.map(|s| format!(" at {s}")).unwrap_or_default();
    let calls = if calls > 0 {
        format!(" in {calls} SDK calls")
    } else {
        String::new()
    };
    Ok(format!(
        "exit {} ({outcome}{step}) in {:.1} s; {op_label}: {faulted} faulted of {attempts} requests{calls}; \
         final rotate: exit 0 in {:.1} s",
        o.code,
        o.elapsed.as_secs_f64(),
        last.elapsed.as_secs_f64()
    ))
}
