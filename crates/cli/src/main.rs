//! The `keyrotor` binary: real adapters, logs on stderr, the exit code from the run.

use std::io::IsTerminal;

use keyrotor::Io;
use keyrotor::backend::RealBackend;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(keyrotor::log_filter(
            std::env::var("RUST_LOG").ok().as_deref(),
        )))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async {
        let mut out = std::io::stdout();
        let mut err = std::io::stderr();
        let terminal = err.is_terminal();
        let mut io = Io {
            out: &mut out,
            err: &mut err,
            terminal,
        };
        keyrotor::run(
            std::env::args_os().collect(),
            &RealBackend::from_env(),
            &mut io,
        )
        .await
    });
    std::process::exit(code);
}
