//! `bootstrap`: keyrotor's Lambda function (`provided.al2023`). Builds the AWS clients once,
//! then serves invocations from the Lambda Runtime API, one step per invocation.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use keyrotor_lambda::{Deps, handle_until, logging};
use lambda_runtime::{Error, LambdaEvent, Runtime, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    logging::init();
    let deps = Arc::new(Deps::from_env().await);
    let handler = service_fn(move |event: LambdaEvent<Value>| {
        let deps = deps.clone();
        // The invocation's deadline (epoch milliseconds): the Azure DevOps client waits for
        // nothing (rate limit, backoff) that would run past it.
        let deadline = UNIX_EPOCH.checked_add(Duration::from_millis(event.context.deadline));
        async move { handle_until(event.payload, &deps, deadline).await }
    });
    Runtime::new(handler)
        .layer(logging::InvocationLayer)
        .run()
        .await
}
