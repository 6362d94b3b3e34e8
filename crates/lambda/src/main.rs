//! `bootstrap`: keyrotor's Lambda function (`provided.al2023`). Builds the AWS clients once,
//! then serves invocations from the Lambda Runtime API, one step per invocation.

use std::sync::Arc;

use keyrotor_lambda::{Deps, handle, logging};
use lambda_runtime::{Error, LambdaEvent, Runtime, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    logging::init();
    let deps = Arc::new(Deps::from_env().await);
    let handler = service_fn(move |event: LambdaEvent<Value>| {
        let deps = deps.clone();
        async move { handle(event.payload, &deps).await }
    });
    Runtime::new(handler)
        .layer(logging::InvocationLayer)
        .run()
        .await
}
