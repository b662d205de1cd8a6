//! Standard output as a pipeline expects it: when the reader went away (`handoff read KEY |
//! head -c 10`), the command stops quietly with exit 0, as `cat` ends without a word, instead
//! of failing with "Broken pipe". Opens a transfer held are still closed on the way out.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static CLOSED: AtomicBool = AtomicBool::new(false);

/// Whether a write to stdout found its reader gone.
pub fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}

/// Whether `err` is stdout's reader going away (and nothing else).
pub fn is_closed_pipe(err: &anyhow::Error) -> bool {
    let broken = |e: &std::io::Error| e.kind() == std::io::ErrorKind::BrokenPipe;
    closed()
        && err.chain().any(|c| {
            c.downcast_ref::<std::io::Error>().is_some_and(broken)
                || matches!(c.downcast_ref(), Some(handoff::DataError::Io(e)) if broken(e))
                || matches!(
                    c.downcast_ref(),
                    Some(handoff::DataError::Control(handoff_core::Error::Io(e))) if broken(e)
                )
                || matches!(c.downcast_ref(), Some(handoff_core::Error::Io(e)) if broken(e))
        })
}

/// `std::io::stdout()` that notes a reader gone (see [`closed`]).
pub struct Stdout;

fn noted<T>(r: std::io::Result<T>) -> std::io::Result<T> {
    if let Err(e) = &r {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            CLOSED.store(true, Ordering::Relaxed);
        }
    }
    r
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        noted(std::io::stdout().write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        noted(std::io::stdout().flush())
    }
}

/// Prints a line (what `say!` expands to): a reader gone ends the process quietly there,
/// since a printed line holds nothing that must be undone.
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = noted(writeln!(out, "{args}").and_then(|()| out.flush())) {
        if closed() {
            std::process::exit(handoff::exit::OK);
        }
        eprintln!("handoff: writing to stdout: {e}");
        std::process::exit(handoff::exit::OTHER);
    }
}
