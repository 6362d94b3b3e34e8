//! `ado-emulator --seed FILE [--port N] [--ignore-stdin]`: serves the Azure DevOps
//! service-endpoint emulator on 127.0.0.1, prints its base URL as the first line of standard
//! output, and serves until standard input closes (so the death of the process that started
//! it stops it too), SIGTERM or Ctrl-C. `--ignore-stdin` keeps it running when standard input
//! is closed from the start (a background job in a script).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use keyrotor_standins::ado::{AdoEmulator, Seed};

const USAGE: &str = "usage: ado-emulator --seed FILE [--port N] [--ignore-stdin]

Serves an emulator of Azure DevOps' service-endpoint REST API on 127.0.0.1 and prints its
base URL (http://127.0.0.1:PORT) as the first line of standard output. Organizations are at
{base}/{org}; the control API is under {base}/_emulator/ (state, requests, faults, reset).
Stops when standard input closes (unless --ignore-stdin), on SIGTERM or on Ctrl-C.";

struct Args {
    seed: PathBuf,
    port: u16,
    watch_stdin: bool,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>> {
    let mut seed = None;
    let mut port = 0;
    let mut watch_stdin = true;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seed" => seed = Some(PathBuf::from(args.next().context("--seed needs a file")?)),
            "--port" => {
                let raw = args.next().context("--port needs a number")?;
                port = raw
                    .parse()
                    .with_context(|| format!("--port {raw}: not a port number"))?;
            }
            "--ignore-stdin" => watch_stdin = false,
            "-h" | "--help" => return Ok(None),
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    let seed = seed.with_context(|| format!("--seed FILE is required\n\n{USAGE}"))?;
    Ok(Some(Args {
        seed,
        port,
        watch_stdin,
    }))
}

#[tokio::main]
async fn main() -> Result<()> {
    let Some(args) = parse_args(std::env::args().skip(1))? else {
        println!("{USAGE}");
        return Ok(());
    };
    let text = std::fs::read_to_string(&args.seed)
        .with_context(|| format!("reading {}", args.seed.display()))?;
    let seed = Seed::from_json(&text).with_context(|| format!("in {}", args.seed.display()))?;
    let stop = stop_signal(args.watch_stdin)?;
    let emulator =
        AdoEmulator::start_on(SocketAddr::from(([127, 0, 0, 1], args.port)), seed).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", emulator.base_url())?;
        out.flush()?;
    }
    stop.await;
    emulator.shutdown().await;
    Ok(())
}

/// Registers the stop conditions now (so a signal sent right after the URL is printed is
/// caught, not fatal) and returns a future that completes when one of them happens: standard
/// input reaching its end (if watched), SIGTERM or Ctrl-C.
fn stop_signal(watch_stdin: bool) -> Result<impl std::future::Future<Output = ()>> {
    let stdin_eof = watch_stdin.then(|| {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // A plain thread: reading stdin blocks, and tokio's stdin needs a feature we lack.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = tx.send(());
        });
        rx
    });
    #[cfg(unix)]
    let (mut term, mut interrupt) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            signal(SignalKind::interrupt()).context("listening for SIGINT")?,
        )
    };
    Ok(async move {
        let stdin_closed = async {
            match stdin_eof {
                Some(rx) => {
                    let _ = rx.await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(unix)]
        tokio::select! {
            () = stdin_closed => {}
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
        #[cfg(not(unix))]
        tokio::select! {
            () = stdin_closed => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    })
}
