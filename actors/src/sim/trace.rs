//! The run's trace: one line per decision, write and fault, stamped with
//! simulated time. Lines are hashed as they come (the digest names a run:
//! the same seed gives the same digest), the last ones are kept for the
//! report of a violation, and all are printed when asked.

use std::collections::VecDeque;

use crate::clock::Mono;

/// Lines kept for a violation's report.
pub const TRACE_TAIL_LINES: usize = 60;

pub struct Trace {
    pub now: Mono,
    tail: VecDeque<String>,
    digest: u64,
    lines: u64,
    print: bool,
}

impl Trace {
    pub fn new(print: bool) -> Trace {
        Trace { now: Mono::ZERO, tail: VecDeque::new(), digest: 0xcbf2_9ce4_8422_2325, lines: 0, print }
    }

    pub fn push(&mut self, line: String) {
        let ms = self.now.as_millis();
        let line = format!("{:>6}.{:03} {line}", ms / 1000, ms % 1000);
        for b in line.bytes().chain(std::iter::once(b'\n')) {
            self.digest = (self.digest ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.lines += 1;
        if self.print {
            println!("{line}");
        }
        if self.tail.len() == TRACE_TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    /// FNV-1a over every line so far.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    pub fn lines(&self) -> u64 {
        self.lines
    }

    pub fn tail(&self) -> Vec<String> {
        self.tail.iter().cloned().collect()
    }
}
