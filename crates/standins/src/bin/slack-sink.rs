//! `slack-sink`: a Slack incoming-webhook sink for the sandbox and for tests in other processes.
//!
//! Prints its webhook URL as the first line of standard output, then serves until standard
//! input closes (so it dies with the process that started it), SIGTERM or Ctrl-C. Posts and
//! scripts are under `/_sink/` on the same address (see `keyrotor_standins::slack`).

use std::io::Write;

use anyhow::Result;
use keyrotor_standins::slack::SlackSink;

#[tokio::main]
async fn main() -> Result<()> {
    // Signals are caught before the URL is printed: whoever reads it may stop us at once.
    let mut stop = Stop::install()?;
    let sink = SlackSink::start().await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", sink.webhook_url())?;
        out.flush()?;
    }
    eprintln!(
        "slack-sink: posts, scripts and reset under {}/",
        sink.api_url()
    );

    // Standard input is read on a plain thread: tokio's stdin needs a feature the workspace
    // does not enable, and a blocked read must not keep the runtime from shutting down.
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = closed_tx.send(());
    });

    tokio::select! {
        _ = closed_rx => {}
        _ = stop.wait() => {}
    }
    sink.stop().await;
    Ok(())
}

/// SIGTERM and Ctrl-C.
struct Stop {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Stop {
    #[cfg(unix)]
    fn install() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    #[cfg(unix)]
    async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }

    #[cfg(not(unix))]
    fn install() -> Result<Self> {
        Ok(Self {})
    }

    #[cfg(not(unix))]
    async fn wait(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}
