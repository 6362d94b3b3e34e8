//! Small tools for scripts: `keyrotor-tools install-moto` installs the pinned `moto[server]` into
//! its virtualenv (once) and prints where.

fn main() {
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        Some("install-moto") => match keyrotor_standins::moto::ensure_installed() {
            Ok(py) => println!(
                "moto {} ready: {}",
                keyrotor_standins::moto::MOTO_VERSION,
                py.display()
            ),
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::exit(1);
            }
        },
        _ => {
            eprintln!("usage: keyrotor-tools install-moto");
            std::process::exit(2);
        }
    }
}
