//! The table: one row per kind of bad input, and the runner that gives every row the same
//! checks (exit code, one sentence that names the offending thing, nothing changed, no leak).

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use keyrotor_testkit::ado::{Scope, aws_endpoint};
use serde_json::{Value, json};

use keyrotor_testkit::env::{
    EP_NAME, Output, PAT_PARAM, SECRET, Snapshot, TestEnv as Env, USER, WRONG_PAT, masked, on_oidc,
};

use super::{
    JSON, TEXT, assert_names, assert_one_sentence, config_line, message_of, the_target, use_key,
};
use crate::spawn_env;

type Fut<'a> = Pin<Box<dyn Future<Output = Expect> + 'a>>;

/// How a case sets itself up on a fresh env (before the "before" state is taken).
type Setup = for<'a> fn(&'a mut Env) -> Fut<'a>;

/// Where the error shows and what the run may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Refused while loading the config or resolving its references: `error: …` on stderr
    /// (one line), no report on stdout, not a single request to Azure DevOps.
    Usage,
    /// The run starts and the target ends with this `outcome`; the report's `error` (or
    /// `reason`) is the message, also printed by the text report; no write to Azure DevOps.
    Target(&'static str),
    /// A PAT that may read but not write: keyrotor learns it only at the PUT, fails the push
    /// and compensates (exit 1). What may change is spelt out in [`check_push_refused`].
    PushRefused,
}

/// What the setup knows only at run time.
#[derive(Debug, Default)]
struct Expect {
    /// Substrings the error must contain (`keyrotor.toml:LINE: FIELD:`, a user, a key, …).
    names: Vec<String>,
    /// For config errors: the lines (inclusive) the `keyrotor.toml:LINE:` may name.
    lines: Option<(usize, usize)>,
    /// Strings that must appear in no output at all (a literal secret in the config).
    never: Vec<String>,
    /// Keys that must still exist afterwards (explicit, though the state compare covers it).
    keep_keys: Vec<String>,
}

impl Expect {
    fn names(names: &[&str]) -> Self {
        Self {
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            ..Self::default()
        }
    }

    /// A config error at `line` of `keyrotor.toml` (the error names `keyrotor.toml:LINE: ` and
    /// then `field`, possibly empty), naming `more` too.
    fn config(line: usize, field: &str, more: &[&str]) -> Self {
        let mut names = vec![
            format!("keyrotor.toml:{line}: {field}")
                .trim_end()
                .to_owned(),
        ];
        names.extend(more.iter().map(|n| (*n).to_owned()));
        Self {
            names,
            lines: Some((line, line)),
            ..Self::default()
        }
    }
}

struct Case {
    name: &'static str,
    setup: Setup,
    kind: Kind,
}

impl Case {
    /// The exit code the README documents for the kind: 2 bad usage, configuration or input,
    /// 3 refused as unsafe, 1 a failed (and compensated) rotation.
    fn code(&self) -> i32 {
        match self.kind {
            Kind::Usage | Kind::Target("invalid") => 2,
            Kind::Target(_) => 3,
            Kind::PushRefused => 1,
        }
    }
}

const USAGE: Kind = Kind::Usage;
const INVALID: Kind = Kind::Target("invalid");
const REFUSED: Kind = Kind::Target("refused");
const PUSH_REFUSED: Kind = Kind::PushRefused;

const fn case(name: &'static str, kind: Kind, setup: Setup) -> Case {
    Case { name, setup, kind }
}

/// Every row: the name, where the error shows (and so the exit code), the setup.
#[rustfmt::skip]
static CASES: &[Case] = &[
    case("config: malformed TOML", USAGE, malformed_toml),
    case("config: an unknown key", USAGE, unknown_key),
    case("config: a missing target field", USAGE, missing_target_field),
    case("config: duplicate target names", USAGE, duplicate_target_names),
    case("config: a literal PAT", USAGE, literal_pat),
    case("config: http to a non-loopback host", USAGE, http_remote),
    case("an unknown IAM user", INVALID, unknown_user),
    case("a secret holding JSON of another shape", INVALID, foreign_secret),
    case("a missing SSM parameter for the PAT", USAGE, missing_pat_parameter),
    case("a wrong PAT", INVALID, wrong_pat),
    case("a PAT without the manage scope", PUSH_REFUSED, read_only_pat),
    case("an endpoint name that matches nothing", INVALID, endpoint_matches_nothing),
    case("an endpoint name that matches two", INVALID, endpoint_matches_two),
    case("a non-AWS (azurerm) endpoint", REFUSED, azurerm_endpoint),
    case("an OIDC endpoint", REFUSED, oidc_endpoint),
    case("two active keys, both in use", REFUSED, two_keys_in_use),
    case("an unknown key that was used", REFUSED, unknown_used_key),
];

// ---------------------------------------------------------------------------------------------
// The setups.

/// The 1-based line of the config that contains `needle` (the first one after `after` lines).
fn line_of(env: &Env, needle: &str, after: usize) -> usize {
    env.config_line_of(needle, after)
}

fn pat_line() -> String {
    format!("pat = \"ssm:{PAT_PARAM}\"")
}

fn at_line(env: &Env, needle: &str, field: &str) -> Expect {
    Expect::config(line_of(env, needle, 0), field, &[])
}

fn malformed_toml(env: &mut Env) -> Fut<'_> {
    Box::pin(async move {
        // An unterminated string: a syntax error has a line but no field to name.
        env.replace_in_config("verify_interval = \"50ms\"", "verify_interval = \"50ms");
        Expect::config(line_of(env, "verify_interval", 0), "", &[])
    })
}

fn unknown_key(env: &mut Env) -> Fut<'_> {
    Box::pin(async move {
        env.replace_in_config("[ado]\n", "[ado]\ncolour = \"blue\"\n");
        Expect::config(line_of(env, "colour", 0), "", &["colour"])
    })
}

fn missing_target_field(env: &mut Env) -> Fut<'_> {
    Box::pin(async move {
        env.replace_in_config(&format!("iam_user = \"{USER}\"\n"), "");
        // The field is missing, so the line can only be the target's table: its header or
        // any of its lines.
        let first = line_of(env, "[[target]]", 0);
        let last = line_of(env, "endpoints", first);
        Expect {
            names: vec!["iam_user".into()],
            lines: Some((first, last)),
            ..Expect::default()
        }
    })
}

fn duplicate_target_names(env: &mut Env) -> Fut<'_> {
    Box::pin(async move {
        env.edit_config(|text| {
            format!(
                "{text}\n[[target]]\nname = \"platform-prod\"\niam_user = \"another-user\"\n\
                 secret = \"/another/secret\"\nendpoints = [ {{ project = \"Platform\", name = \
                 \"aws-other\" }} ]\n"
            )
        });
        let second = line_of(env, "name = \"platform-prod\"", 0);
        let line = line_of(env, "name = \"platform-prod\"", second);
        Expect::config(line, "target[1].name:", &["platform-prod"])
    })
}

/// A PAT-shaped literal; it must never be echoed.
const LITERAL_PAT: &str = "plaintextpat7q3xk9m2v8w4r6t1y5u0i3o7p2a9s4d6f8g1h3j5k";

fn literal_pat(env: &mut Env) -> Fut<'_> {
    Box::pin(async move {
        env.add_secret(LITERAL_PAT);
        env.replace_in_config(&pat_line(), &format!("pat = \"{LITERAL_PAT}\""));
        let mut e = at_line(env, "pat = ", "ado.pat:");
        e.never.push(LITERAL_PAT.into());
        e
    })
}

fn http_remote(env: &mut Env) -> Fut<'_> {
    Box::pin(async move {
        let url = env.org_url();
        env.replace_in_config(&url, "http://dev.azure.com/x");
        let mut e = at_line(env, "organization = ", "ado.organization:");
        e.names.push("http".into());
        e
    })
}

fn missing_pat_parameter(env: &mut Env) -> Fut<'_> {
    Box::pin(async move {
        env.replace_in_config(&pat_line(), "pat = \"ssm:/azuredevops/no/such/pat\"");
        Expect::names(&["ado.pat", "/azuredevops/no/such/pat"])
    })
}

fn unknown_user(env: &mut Env) -> Fut<'_> {
    Box::pin(async move {
        env.replace_in_config(
            &format!("iam_user = \"{USER}\""),
            "iam_user = \"no-such-user\"",
        );
        Expect::names(&["no-such-user"])
    })
}

fn foreign_secret(env: &mut Env) -> Fut<'_> {
    Box::pin(async move {
        let password = "not-an-access-key-7f3a9c21e4";
        env.add_secret(password);
        let value = json!({"username": "deploy-bot", "password": password, "host": "db.internal"});
        env.sm
            .put_secret_value()
            .secret_id(SECRET)
            .secret_string(value.to_string())
            .send()
            .await
            .unwrap();
        Expect::names(&[SECRET])
    })
}

fn wrong_pat(env: &mut Env) -> Fut<'_> {
    Box::pin(async move {
        env.set_pat_parameter(WRONG_PAT).await;
        Expect::names(&["Azure DevOps", "PAT"])
    })
}

fn read_only_pat(env: &mut Env) -> Fut<'_> {
    Box::pin(async move {
        let org = env.org_seed(Scope::Read);
        env.reseed(org).await;
        Expect::names(&[EP_NAME])
    })
}

fn endpoint_matches_nothing(env: &mut Env) -> Fut<'_> {
    Box::pin(async move {
        env.replace_in_config(
            &format!("{{ project = \"Platform\", name = \"{EP_NAME}\" }}"),
            "{ project = \"Platform\", name = \"aws-nope\" }",
        );
        Expect::names(&["aws-nope", "Platform"])
    })
}

fn endpoint_matches_two(env: &mut Env) -> Fut<'_> {
    Box::pin(async move {
        // Azure DevOps compares connection names case-insensitively (the emulator's
        // `endpointNames` filter and its uniqueness check do too), so `AWS-Prod` collides with
        // `aws-prod`. The real service refuses to create such a pair in one project; the
        // emulator's seed stores endpoints as given, so it can hold them, and keyrotor must
        // refuse the ambiguity rather than pick one.
        let twin = aws_endpoint(
            "AWS-Prod",
            &env.initial_key,
            &env.initial_secret,
            &["Platform"],
        );
        let org = env.org_seed(Scope::Manage).endpoint(twin);
        env.reseed(org).await;
        Expect::names(&[EP_NAME, "Platform"])
    })
}

fn azurerm_endpoint(env: &mut Env) -> Fut<'_> {
    Box::pin(async move {
        let mut org = env.org_seed(Scope::Manage);
        let ep = &mut org.endpoints[0];
        ep["type"] = json!("azurerm");
        ep["url"] = json!("https://management.azure.com/");
        ep["data"] = json!({
            "environment": "AzureCloud",
            "scopeLevel": "Subscription",
            "subscriptionId": "0f3c2a9e-5b1d-4e7a-8c6f-2d9b4a1e7c30",
            "subscriptionName": "Platform"
        });
        // Workload identity federation: no secret in the connection at all.
        ep["authorization"] = json!({
            "scheme": "WorkloadIdentityFederation",
            "parameters": {
                "tenantid": "7a1e4c2b-9d3f-4b6a-8e0c-5f2d1a9b3c47",
                "serviceprincipalid": "3c9e1a7f-2b4d-4f8a-9c6e-1d5b7a3f9e20",
                "workloadIdentityFederationIssuer": "https://vstoken.dev.azure.com/org",
                "workloadIdentityFederationSubject": "sc://contoso/Platform/aws-prod"
            }
        });
        env.reseed(org).await;
        Expect::names(&[EP_NAME, "azurerm"])
    })
}

fn oidc_endpoint(env: &mut Env) -> Fut<'_> {
    Box::pin(async move {
        let mut org = env.org_seed(Scope::Manage);
        on_oidc(&mut org.endpoints[0]);
        env.reseed(org).await;
        Expect::names(&[EP_NAME, "OIDC"])
    })
}

fn two_keys_in_use(env: &mut Env) -> Fut<'_> {
    Box::pin(async move {
        let (id, secret) = env.add_key().await;
        env.add_listed_connection("aws-prod-2", (&id, &secret))
            .await;
        let mut e = Expect::names(&["two active keys"]);
        e.names.push(masked(&env.initial_key));
        e.names.push(masked(&id));
        e.keep_keys = vec![env.initial_key.clone(), id];
        e
    })
}

fn unknown_used_key(env: &mut Env) -> Fut<'_> {
    Box::pin(async move {
        let (id, secret) = env.add_key().await;
        use_key(env, &id, &secret).await;
        let mut e = Expect::names(&[USER]);
        e.names.push(masked(&id));
        e.keep_keys = vec![env.initial_key.clone(), id];
        e
    })
}

// ---------------------------------------------------------------------------------------------
// The runner.

fn context(o: &Output) -> String {
    o.show()
}

/// Runs one form of the command the way the case needs.
async fn run(env: &Env, kind: Kind, args: &[&str]) -> Output {
    match kind {
        // A config error stops the binary before it logs (or sends) anything.
        Kind::Usage => env.cmd(args).untraced().run().await,
        _ => env.run(args).await,
    }
}

/// One sentence on one line, naming everything it must.
fn check_message(msg: &str, e: &Expect, o: &Output) {
    assert_one_sentence(msg, &context(o));
    assert_names(msg, &e.names, &context(o));
    if std::env::var_os("KEYROTOR_BADINPUT_SHOW").is_some() {
        println!("     message: {msg}");
    }
}

/// The one `error:` line of a usage error, without the prefix.
fn usage_error(o: &Output) -> String {
    let lines = o.errors();
    assert_eq!(
        lines.len(),
        1,
        "exactly one error line on stderr: {}",
        context(o)
    );
    assert!(
        o.stdout.trim().is_empty(),
        "no report on stdout after a usage error: {}",
        context(o)
    );
    lines[0]
        .strip_prefix("error: ")
        .unwrap_or_else(|| panic!("the error line starts with `error: `: {:?}", lines[0]))
        .to_owned()
}

fn check_usage(o: &Output, e: &Expect) -> String {
    let msg = usage_error(o);
    check_message(&msg, e, o);
    if let Some((first, last)) = e.lines {
        let line = config_line(&msg)
            .unwrap_or_else(|| panic!("the error names no `keyrotor.toml:LINE:`: {msg:?}"));
        assert!(
            (first..=last).contains(&line),
            "the error names line {line}, expected {first}..={last}: {msg:?}"
        );
    }
    msg
}

/// The target's message in the JSON report, checked.
fn check_report(o: &Output, outcome: &str, e: &Expect) -> (Value, String) {
    let t = the_target(o);
    assert_eq!(t["outcome"], outcome, "{}", context(o));
    let msg = message_of(&t);
    check_message(&msg, e, o);
    (t, msg)
}

/// The text report prints the message on one line of its own.
fn check_text_report(o: &Output, msg: &str) {
    assert!(
        o.stdout.lines().any(|l| l.contains(msg)),
        "the text report prints the error {msg:?}: {}",
        context(o)
    );
}

/// A read-only PAT: the PUT is refused, the push fails, keyrotor compensates (exit 1).
fn check_push_refused(o: &Output, e: &Expect, env_key: &str) -> String {
    let t = the_target(o);
    assert_eq!(t["outcome"], "failed", "{}", context(o));
    assert_eq!(t["failed_step"], "push", "{}", context(o));
    assert!(
        t["compensation"].as_str().is_some_and(|c| !c.is_empty()),
        "the report says what was undone: {t:#}"
    );
    let new = t["new_key"].as_str().expect("the report names the new key");
    assert_ne!(new, masked(env_key), "{t:#}");
    assert_eq!(t["old_key"], masked(env_key).as_str(), "{t:#}");
    let msg = message_of(&t);
    check_message(&msg, e, o);
    msg
}

/// After a push refused for scope, what must be unchanged: IAM's key list with status (the
/// new key is deleted, the old one is still the only key, Active, and the endpoint holds it),
/// the stages (AWSCURRENT holds the same value; no AWSPENDING or AWSPREVIOUS is left), every
/// version that existed before keeps exactly its stages, and Azure DevOps (the PUT was
/// refused, so the endpoint still holds the old key and its secret).
///
/// What may change, and why that is fine: Secrets Manager cannot delete one version of a
/// secret, so each run's intent record and the version that stored its new key (`<run>-intent`
/// and `<run>-key`) stay behind. They must carry no label at all: nothing reads an unlabelled
/// version (every reader asks for a stage), Secrets Manager deprecates and eventually removes
/// them, and the secret access key in `<run>-key` belongs to a key that no longer exists.
fn assert_push_refused_state(before: &Snapshot, after: &Snapshot, writes: &[String]) {
    assert_eq!(
        after.aws.keys, before.aws.keys,
        "IAM: the new key was deleted, the old one is still Active"
    );
    assert_eq!(
        after.aws.stages, before.aws.stages,
        "the same AWSCURRENT value; no AWSPENDING or AWSPREVIOUS left"
    );
    for (version, stages) in &before.aws.versions {
        assert_eq!(
            after.aws.versions.get(version),
            Some(stages),
            "version {version} keeps exactly its stages: {:#?}",
            after.aws.versions
        );
    }
    for (version, stages) in &after.aws.versions {
        if !before.aws.versions.contains_key(version) {
            assert!(
                stages.is_empty(),
                "a version written by the failed runs carries no label: {version} {stages:?}"
            );
        }
    }
    assert_eq!(after.ado, before.ado, "Azure DevOps unchanged");
    assert!(!writes.is_empty(), "keyrotor tried the PUT");
    assert!(
        writes
            .iter()
            .all(|w| w.starts_with("PUT ") && (w.ends_with("-> 401") || w.ends_with("-> 403"))),
        "the only writes are refused PUTs: {writes:#?}"
    );
}

/// Runs one case with every check.
async fn run_case(case: &Case) {
    let mut env = spawn_env().await;
    let e = (case.setup)(&mut env).await;
    let before = env.snapshot().await;
    env.ado.clear_requests();

    let json_run = run(&env, case.kind, JSON).await;
    assert_eq!(
        json_run.code,
        case.code(),
        "exit code: {}",
        context(&json_run)
    );
    let text_run = match case.kind {
        Kind::Usage => {
            let msg = check_usage(&json_run, &e);
            let text = run(&env, case.kind, TEXT).await;
            assert_eq!(text.code, case.code(), "exit code: {}", context(&text));
            assert_eq!(check_usage(&text, &e), msg, "the same error in both forms");
            assert_eq!(
                env.ado.requests(),
                vec![],
                "not a single request reached Azure DevOps"
            );
            text
        }
        Kind::Target(outcome) => {
            let (t, msg) = check_report(&json_run, outcome, &e);
            assert!(t["new_key"].is_null(), "no new key: {t:#}");
            let text = run(&env, case.kind, TEXT).await;
            assert_eq!(text.code, case.code(), "exit code: {}", context(&text));
            check_text_report(&text, &msg);
            text
        }
        Kind::PushRefused => {
            check_push_refused(&json_run, &e, &env.initial_key);
            let text = run(&env, case.kind, TEXT).await;
            assert_eq!(text.code, case.code(), "exit code: {}", context(&text));
            assert!(
                text.stdout.lines().any(|l| l.contains("failed at push")
                    && e.names.iter().all(|n| l.contains(n.as_str()))),
                "the text report names the failed step and the connection: {}",
                context(&text)
            );
            text
        }
    };

    for o in [&json_run, &text_run] {
        for s in &e.never {
            assert!(
                !o.stdout.contains(s.as_str()) && !o.stderr.contains(s.as_str()),
                "{} is echoed: {}",
                super::hint(s),
                context(o)
            );
        }
    }

    let after = env.snapshot().await;
    let writes = env.write_requests();
    if case.kind == Kind::PushRefused {
        assert_push_refused_state(&before, &after, &writes);
        if std::env::var_os("KEYROTOR_BADINPUT_SHOW").is_some() {
            println!(
                "     secret versions before {:?}, after {:?}; writes {writes:?}",
                before.aws.versions, after.aws.versions
            );
        }
    } else {
        env.assert_unchanged(&before).await;
    }
    for k in &e.keep_keys {
        assert_eq!(
            after.aws.keys.get(k).map(String::as_str),
            Some("Active"),
            "key {} is still there and Active",
            masked(k)
        );
    }
    env.stop().await;
}

/// Runs one case on a thread and runtime of its own, so that a failing case is reported and
/// the table goes on.
fn run_isolated(case: &'static Case) -> Result<(), String> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(run_case(case));
    })
    .join()
    .map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panicked".into())
    })
}

/// The table: every case, one line each, then `bad input: N cases, N passed`.
#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let mut failed = Vec::new();
    for case in CASES {
        let started = Instant::now();
        match run_isolated(case) {
            Ok(()) => {
                println!(
                    "ok   {:<40} exit {} ({:.1}s)",
                    case.name,
                    case.code(),
                    started.elapsed().as_secs_f64()
                );
            }
            Err(msg) => {
                let first = msg.lines().next().unwrap_or_default().to_owned();
                println!("FAIL {:<40} {first}", case.name);
                failed.push((case.name, msg));
            }
        }
    }
    println!(
        "bad input: {} cases, {} passed",
        CASES.len(),
        CASES.len() - failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} case(s) failed:\n{}",
        failed.len(),
        failed
            .iter()
            .map(|(n, m)| format!("--- {n}\n{m}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn every_case_is_in_the_table_once() {
    let mut names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), CASES.len());
}
