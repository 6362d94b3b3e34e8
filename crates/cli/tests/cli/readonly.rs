//! `plan`, `status` and `--help`: they change nothing.

use keyrotor_testkit::env::{EP_ID, EP_NAME, TARGET, masked};

use crate::spawn_env;

#[tokio::test]
async fn plan_and_status_show_the_masked_key_and_change_nothing() {
    let env = spawn_env().await;
    let before = env.snapshot().await;
    let key = masked(&env.initial_key);

    let plan = env.run(&["plan", "--force"]).await;
    assert_eq!(plan.code, 0, "{}", plan.show());
    assert!(plan.stdout.contains("would rotate"), "{}", plan.show());
    assert!(plan.stdout.contains(&key), "{}", plan.show());

    let plan = env.run(&["plan", "--force", "--output", "json"]).await;
    assert_eq!(plan.code, 0, "{}", plan.show());
    let doc = plan.json();
    assert_eq!(doc["targets"][0]["name"], TARGET, "{doc:#}");
    assert_eq!(doc["targets"][0]["outcome"], "rotated", "{doc:#}");
    assert_eq!(doc["targets"][0]["old_key"], key.as_str(), "{doc:#}");
    assert_eq!(doc["notification"]["status"], "not-configured", "{doc:#}");

    let status = env.run(&["status"]).await;
    assert_eq!(status.code, 0, "{}", status.show());
    for shown in [key.as_str(), "AWSCURRENT", EP_NAME, EP_ID] {
        assert!(status.stdout.contains(shown), "{shown}: {}", status.show());
    }

    let status = env.run(&["status", "--output", "json"]).await;
    assert_eq!(status.code, 0, "{}", status.show());
    let doc = status.json();
    let t = &doc["targets"][0];
    assert_eq!(t["name"], TARGET, "{doc:#}");
    assert_eq!(t["keys"][0]["key"], key.as_str(), "{doc:#}");
    assert_eq!(t["keys"][0]["status"], "Active", "{doc:#}");
    assert_eq!(t["stages"]["AWSCURRENT"], key.as_str(), "{doc:#}");
    let endpoints = t["endpoints"].as_array().unwrap();
    assert!(
        !endpoints.is_empty()
            && endpoints
                .iter()
                .all(|e| e["id"] == EP_ID && e["key"] == key.as_str()),
        "{doc:#}"
    );

    env.assert_unchanged(&before).await;
    assert!(env.posts().is_empty(), "plan and status post nothing");
    env.stop().await;
}

#[test]
fn help_lists_the_exit_codes() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyrotor"))
        .arg("--help")
        .env_clear()
        .output()
        .expect("the keyrotor binary runs");
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("Exit codes"), "{help}");
    for code in 0..=4 {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{code} "))),
            "exit code {code} is listed:\n{help}"
        );
    }
    for command in ["rotate", "plan", "status", "init"] {
        assert!(help.contains(command), "{command}:\n{help}");
    }
}

fn keyrotor(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_keyrotor"))
        .args(args)
        .env_clear()
        .output()
        .expect("the keyrotor binary runs")
}

#[test]
fn completions_come_from_the_same_definitions_as_the_parser() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef keyrotor"),
        ("fish", "complete -c keyrotor"),
    ] {
        let out = keyrotor(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(marker), "{shell}: {script}");
        for command in ["rotate", "plan", "status", "check", "audit", "sandbox"] {
            assert!(script.contains(command), "{shell} completes {command}");
        }
    }
    let out = keyrotor(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "an unknown shell is bad usage");
}

#[test]
fn the_man_page_is_generated_and_written_per_command() {
    let out = keyrotor(&["man"]);
    assert_eq!(out.status.code(), Some(0));
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(
        page.starts_with(".ie \\n(.g .ds Aq"),
        "roff: {}",
        &page[..80.min(page.len())]
    );
    assert!(page.contains(".TH keyrotor 1"), "{page}");
    assert!(
        page.contains("Exit codes"),
        "the exit codes are in the page"
    );
    let dir = std::env::temp_dir().join(format!("keyrotor-man-{}", std::process::id()));
    let out = keyrotor(&["man", "--out", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    for page in ["keyrotor.1", "keyrotor-check.1", "keyrotor-rotate.1"] {
        assert!(dir.join(page).is_file(), "{page} written");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
