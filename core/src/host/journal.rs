//! `ocd run --journal FILE` (DESIGN §10): the driver writes every input it hands the core, with
//! its time, and chains every output it takes into a running hash ([`crate::journal`] has the
//! format and the replay; `ocd-sim replay FILE` replays it). Records go through a buffer flushed
//! after each step of the driver, so a crash loses at most the last step's records (the replay
//! then stops at the last whole record and says so). The journal is bounded: past
//! `journal_max_bytes` nothing more is written (one WARN), and what was written stays a valid
//! journal of the run's beginning.

use crate::journal::{JournalSetup, Recorder};
use crate::proto::{Input, Output, Timestamp};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A journal being written.
pub struct JournalWriter {
    path: PathBuf,
    file: BufWriter<File>,
    rec: Recorder,
    written: u64,
    max: u64,
    /// The cap was reached, or a write failed: nothing more is written.
    stopped: bool,
}

impl JournalWriter {
    /// Creates (or replaces) the journal at `path` with the setup record.
    pub fn create(path: &Path, setup: &JournalSetup, max_bytes: u64) -> std::io::Result<JournalWriter> {
        let mut file = BufWriter::with_capacity(256 * 1024, File::create(path)?);
        let header = Recorder::header(setup);
        file.write_all(&header)?;
        file.flush()?;
        tracing::info!(path = %path.display(), max_bytes, "journaling every input of the core");
        Ok(JournalWriter {
            path: path.to_path_buf(),
            file,
            rec: Recorder::default(),
            written: header.len() as u64,
            max: max_bytes,
            stopped: false,
        })
    }

    /// Records an input about to be handed to the core.
    pub fn input(&mut self, now: Timestamp, input: &Input) {
        if self.stopped {
            return;
        }
        let record = self.rec.step(now, input);
        if self.written + record.len() as u64 > self.max {
            self.stopped = true;
            let _ = self.file.flush();
            tracing::warn!(
                path = %self.path.display(),
                steps = self.rec.steps() - 1,
                max_bytes = self.max,
                "the journal reached journal_max_bytes: it stops here (what it holds replays)"
            );
            return;
        }
        self.write(&record);
    }

    /// Chains an output taken from the core into the running hash.
    pub fn output(&mut self, o: &Output) {
        if !self.stopped {
            self.rec.output(o);
        }
    }

    /// Flushes what is buffered (after each step of the driver).
    pub fn flush(&mut self) {
        if !self.stopped && self.file.flush().is_err() {
            self.fail("flushing");
        }
    }

    /// Writes the clean-end record and syncs the file.
    pub fn finish(mut self) {
        if self.stopped {
            return;
        }
        let end = self.rec.end();
        self.write(&end);
        if self.file.flush().is_err() || self.file.get_ref().sync_all().is_err() {
            self.fail("closing");
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn write(&mut self, record: &[u8]) {
        if self.file.write_all(record).is_err() {
            self.fail("writing");
            return;
        }
        self.written += record.len() as u64;
    }

    fn fail(&mut self, what: &str) {
        self.stopped = true;
        tracing::warn!(path = %self.path.display(), "the journal stopped: {what} failed");
    }
}
