//! **verify**: STS signed with the new key, a number of times in a row.

use super::*;

/// **verify**: `GetCallerIdentity` signed with the new key must answer the user's ARN
/// `verify_consecutive` times in a row, within `budget`.
pub async fn verify(
    ports: &Ports,
    target: &Target,
    policy: &Policy,
    progress: &mut Progress,
    budget: Duration,
) -> Result<(), StepError> {
    let step = Step::Verify;
    let (id, secret) = pending_secret(ports, target, policy, progress, step).await?;
    let deadline = tokio::time::Instant::now() + budget;
    let mut streak = 0;
    let mut last = String::from("no attempt was made");
    loop {
        match ports.sts.caller_arn(&id, &secret).await {
            Ok(arn) => {
                let ok = arn.iam_user_name() == Some(target.iam_user.as_str());
                if !ok {
                    return Err(StepError::new(
                        step,
                        StepErrorKind::Failed,
                        format!(
                            "the new key belongs to {arn}, not to IAM user '{}'",
                            target.iam_user
                        ),
                    ));
                }
                streak += 1;
                if streak >= policy.verify_consecutive {
                    return Ok(());
                }
            }
            Err(e)
                if matches!(
                    e.kind,
                    PortErrorKind::Unauthorized | PortErrorKind::Retryable
                ) =>
            {
                streak = 0;
                last = e.message;
            }
            Err(e) => return Err(StepError::port(step, "calling STS with the new key", e)),
        }
        if tokio::time::Instant::now() + policy.verify_interval > deadline {
            return Err(StepError::new(
                step,
                StepErrorKind::NotPropagated,
                format!(
                    "IAM did not accept the new key {id} {} times in a row within {} (last: {last})",
                    policy.verify_consecutive,
                    crate::plan::human(budget)
                ),
            ));
        }
        tokio::time::sleep(policy.verify_interval).await;
    }
}
