//! patronictl's questions, as click asks them: the prompt on stdout, the
//! answer read from stdin (a terminal or a pipe). End of input aborts, as
//! click's `Abort` does (`podman exec` without `-i` gives an empty stdin:
//! without `--force` the command stops at the first question, exit 1).

use std::io::{BufRead, Write};

use super::CliError;

fn read_answer(text: &str) -> Result<String, CliError> {
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{text}");
    let _ = out.flush();
    drop(out);
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(0) | Err(_) => Err(CliError::Aborted),
        Ok(_) => Ok(line.trim_end_matches(['\n', '\r']).to_owned()),
    }
}

/// `click.prompt(text, default=default)`: `text [default]: `; an empty
/// answer is the default.
pub fn prompt(text: &str, default: &str) -> Result<String, CliError> {
    let answer = read_answer(&format!("{text} [{default}]: "))?;
    Ok(if answer.is_empty() { default.to_owned() } else { answer })
}

/// `click.confirm(text)`: `text [y/N]: `; y/yes or n/no (empty: no); asks
/// again after anything else.
pub fn confirm(text: &str) -> Result<bool, CliError> {
    loop {
        let answer = read_answer(&format!("{text} [y/N]: "))?.trim().to_ascii_lowercase();
        match answer.as_str() {
            "y" | "yes" => return Ok(true),
            "" | "n" | "no" => return Ok(false),
            _ => println!("Error: invalid input"),
        }
    }
}
