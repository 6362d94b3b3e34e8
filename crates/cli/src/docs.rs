//! `keyrotor completions SHELL` and `keyrotor man`: generated from the same clap definitions as
//! the parser, so they cannot drift from it.

use std::path::Path;

use clap::CommandFactory;
use keyrotor_core::report::exit;

use crate::{Cli, Io};

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell, io: &mut Io<'_>) -> i32 {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "keyrotor", &mut buf);
    let _ = io.out.write_all(&buf);
    exit::OK
}

/// Prints the man page, or writes one per command into `out`.
pub fn man(out: Option<&Path>, io: &mut Io<'_>) -> i32 {
    let cmd = Cli::command();
    let written = match out {
        None => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut buf)
                .map(|()| io.out.write_all(&buf))
        }
        Some(dir) => std::fs::create_dir_all(dir)
            .and_then(|()| clap_mangen::generate_to(cmd, dir))
            .map(|()| writeln!(io.out, "man pages written to {}", dir.display())),
    };
    match written {
        Ok(_) => exit::OK,
        Err(e) => {
            let _ = writeln!(io.err, "error: the man page could not be written: {e}");
            exit::USAGE
        }
    }
}
