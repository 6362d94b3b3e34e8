//! The `keyrotor` binary: real adapters, logs on stderr, the exit code from the run.

use std::io::IsTerminal;
use std::sync::Arc;

use async_trait::async_trait;
use keyrotor::{AwsPorts, Backend, Io};
use keyrotor_core::ports::{Notifier, PortResult, ServiceConnections};
use secrecy::SecretString;

struct RealBackend;

#[async_trait]
impl Backend for RealBackend {
    async fn aws(&self, region: Option<String>) -> AwsPorts {
        let config = keyrotor_aws::load_config(region).await;
        let aws = Arc::new(keyrotor_aws::Aws::new(&config));
        AwsPorts {
            iam: aws.clone(),
            secrets: aws.clone(),
            sts: aws.clone(),
            params: aws,
        }
    }

    fn ado(&self, pat: SecretString) -> PortResult<Arc<dyn ServiceConnections>> {
        Ok(Arc::new(keyrotor_ado::AdoClient::new(pat)?))
    }

    fn notifier(&self, webhook: SecretString) -> PortResult<Arc<dyn Notifier>> {
        Ok(Arc::new(keyrotor_notify::SlackNotifier::new(webhook)?))
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
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
        keyrotor::run(std::env::args_os().collect(), &RealBackend, &mut io).await
    });
    std::process::exit(code);
}
