//! The `fabric-cni` binary: the runtime runs it with `CNI_*` variables and the
//! network configuration on stdin; it prints the answer on stdout.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::process::ExitCode;

use fabric_cni::{api, plugin};

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let outcome = match io::stdin().lock().read_to_end(&mut stdin) {
        Ok(_) => plugin::run(&environment(), &stdin, api::call),
        Err(e) => plugin::unreadable_stdin(&e),
    };
    // Nothing useful is left to do if the runtime stopped listening.
    let mut stdout = io::stdout().lock();
    let _ = stdout
        .write_all(outcome.stdout.as_bytes())
        .and_then(|()| stdout.flush());
    ExitCode::from(u8::try_from(outcome.exit_code).unwrap_or(1))
}

/// The process environment; variables that are not UTF-8 count as unset.
fn environment() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}
