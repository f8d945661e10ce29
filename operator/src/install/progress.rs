//! What the user sees while installing: one `✔` line per finished step, and while waiting either a
//! spinner (on a terminal) or a plain line each time the set of pending objects changes.

use std::fmt;
use std::io::{self, IsTerminal, Write};

const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/// Progress reporter; output errors are ignored (progress must never fail an install).
pub struct Progress {
    out: Box<dyn Write + Send>,
    spinner: bool,
    frame: usize,
    spinning: bool,
    last_wait: Option<String>,
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Progress").field("spinner", &self.spinner).finish_non_exhaustive()
    }
}

impl Progress {
    /// Reports on stdout, with a spinner when stdout is a terminal.
    pub fn stdout() -> Progress {
        let spinner = io::stdout().is_terminal();
        Progress::to_writer(Box::new(io::stdout()), spinner)
    }

    /// Reports nothing (library callers and tests).
    pub fn quiet() -> Progress {
        Progress::to_writer(Box::new(io::sink()), false)
    }

    pub fn to_writer(out: Box<dyn Write + Send>, spinner: bool) -> Progress {
        Progress { out, spinner, frame: 0, spinning: false, last_wait: None }
    }

    /// A finished step: `✔ <what>`.
    pub fn done(&mut self, what: &str) {
        self.line(&format!("✔ {what}"));
    }

    /// Any other line (dry-run listings, notes).
    pub fn line(&mut self, text: &str) {
        self.clear_spinner();
        let _ = writeln!(self.out, "{text}");
        let _ = self.out.flush();
    }

    /// Still waiting on `what`: advances the spinner, or prints a line when `what` changed.
    pub fn waiting(&mut self, what: &str) {
        if self.spinner {
            let frame = FRAMES[self.frame % FRAMES.len()];
            self.frame += 1;
            self.spinning = true;
            let _ = write!(self.out, "\r\x1b[2K{frame} {what}");
            let _ = self.out.flush();
        } else if self.last_wait.as_deref() != Some(what) {
            self.last_wait = Some(what.to_owned());
            let _ = writeln!(self.out, "  {what}");
        }
    }

    fn clear_spinner(&mut self) {
        if self.spinning {
            let _ = write!(self.out, "\r\x1b[2K");
            self.spinning = false;
        }
    }
}
