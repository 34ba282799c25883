//! The durable log: append-only segment files of checksummed records, group
//! committed with one `fdatasync` per batch. Records in (with their kind),
//! sequence numbers out; on open, every intact record is replayed and a torn
//! or corrupt tail is cut, never parsed.
//!
//! Frame: `[len u32 LE][crc32 u32 LE][kind u8][payload]`, `len` counting the
//! kind byte and payload, the CRC covering the same bytes. A segment is
//! named by the sequence number of its first record.

pub mod snapshot;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest record accepted (a bigger length field means a corrupt frame).
pub const MAX_RECORD_BYTES: usize = 16 << 20;
/// A segment is closed once it grows past this.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
const HEADER: usize = 8;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// One event, as wire JSON.
    Event = 1,
    /// An alert acknowledgement: `{"id": …, "by": …}`.
    AlertAck = 2,
    /// The wall clock at a group commit (ms, 8 bytes LE), so replay ticks
    /// the engine at the times the original run did.
    Clock = 3,
}

impl RecordKind {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Event),
            2 => Some(Self::AlertAck),
            3 => Some(Self::Clock),
            _ => None,
        }
    }
}

/// What opening the log found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// Records replayed (with sequence numbers above the `from` given).
    pub replayed: u64,
    /// Bytes cut from a torn or corrupt tail.
    pub truncated_bytes: u64,
    /// Segments removed because they followed a corrupt record.
    pub dropped_segments: u64,
    /// Sequence number the next record gets.
    pub next_seq: u64,
}

/// The writer side of the log. Owned by one thread.
#[derive(Debug)]
pub struct LogWriter {
    dir: PathBuf,
    file: File,
    segment_base: u64,
    segment_len: u64,
    max_segment_bytes: u64,
    next_seq: u64,
    pending: Vec<u8>,
    pending_records: u64,
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

/// Removes the segments of the log in `dir` whose every record has a
/// sequence number below `seq` (covered by a snapshot); returns how many.
/// The open segment is the newest and is never removed, so this may run on
/// any thread while the log is written: the snapshot writer calls it, so
/// unlinking hundreds of MiB never holds up a commit (it took 30–45 ms).
pub fn remove_segments_before(dir: &Path, seq: u64) -> io::Result<u64> {
    let bases = segments(dir)?;
    let mut removed = 0;
    // A segment with a successor is closed; its records end below the
    // successor's base.
    for pair in bases.windows(2) {
        let (base, next_base) = (pair[0], pair[1]);
        if next_base <= seq {
            remove_gradually(&segment_path(dir, base))?;
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// Segment bases present in `dir`, ascending.
fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".seg")
            && let Ok(base) = stem.parse::<u64>()
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// fsyncs a directory so a created, renamed or removed entry is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Bytes a big file gives back per step of [`remove_gradually`].
const REMOVE_STEP_BYTES: u64 = 8 << 20;
/// Pause between two steps, so that log commits in between each carry at
/// most one step's worth of freed blocks.
const REMOVE_STEP_PAUSE: Duration = Duration::from_millis(2);

/// The suffix of a file being removed: no listing of segments or
/// snapshots matches it.
const REMOVING_SUFFIX: &str = ".removing";

/// Removes the file at `path` a few MiB at a time: renamed out of every
/// listing (durably), shortened by `REMOVE_STEP_BYTES` (8 MiB) per step with a
/// pause between, then unlinked. A crash part-way leaves the whole file
/// under its own name or a shorter one under a name nothing reads (and
/// [`remove_leftovers`] clears at start): a covered segment cut short
/// under its own name would read as a torn log, and recovery would drop
/// every segment after it.
///
/// Freeing a big file's blocks at once is work for the file system's next
/// journal commit, which a log `fdatasync` then waits for (on a disk
/// mounted with `discard`, as here, it includes trimming every freed
/// block). A probe on this machine measured a concurrent small
/// `fdatasync` held 21–22 ms by the unlink of a 128 MiB file, and at most
/// 2.4 ms when the file was shortened 8 MiB at a time first. For
/// background threads: a 128 MiB file takes ~30 ms.
pub fn remove_gradually(path: &Path) -> io::Result<()> {
    let retired = retire(path)?;
    let file = OpenOptions::new().write(true).open(&retired)?;
    let mut len = file.metadata()?.len();
    while len > REMOVE_STEP_BYTES {
        len -= REMOVE_STEP_BYTES;
        file.set_len(len)?;
        std::thread::sleep(REMOVE_STEP_PAUSE);
    }
    drop(file);
    fs::remove_file(retired)
}

/// Renames `path` to its [`REMOVING_SUFFIX`] name and makes the rename
/// durable; returns the new path.
fn retire(path: &Path) -> io::Result<PathBuf> {
    let mut name = path.as_os_str().to_owned();
    name.push(REMOVING_SUFFIX);
    let retired = PathBuf::from(name);
    fs::rename(path, &retired)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(retired)
}

/// Deletes what a crash left of files being removed in `dir`.
pub fn remove_leftovers(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().ends_with(REMOVING_SUFFIX) {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Frames one record into `out`.
pub fn encode(out: &mut Vec<u8>, kind: RecordKind, payload: &[u8]) {
    let len = u32::try_from(payload.len() + 1).expect("records are far below 4 GiB");
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind as u8]);
    crc.update(payload);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(payload);
}

/// Reads the frames of one segment's bytes, calling `f` for each intact
/// record; returns the offset of the first byte that is not a whole valid
/// frame (the length of the valid prefix).
fn scan(bytes: &[u8], mut f: impl FnMut(RecordKind, &[u8])) -> usize {
    let mut at = 0;
    while bytes.len() - at >= HEADER {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_RECORD_BYTES + 1 || bytes.len() - at - HEADER < len {
            break;
        }
        let body = &bytes[at + HEADER..at + HEADER + len];
        if crc32fast::hash(body) != crc {
            break;
        }
        let Some(kind) = RecordKind::from_byte(body[0]) else {
            break;
        };
        f(kind, &body[1..]);
        at += HEADER + len;
    }
    at
}

impl LogWriter {
    /// Opens (creating) the log in `dir`, replays every intact record with a
    /// sequence number of at least `from` through `replay`, cuts a damaged
    /// tail, and returns a writer positioned after the last good record.
    pub fn open(
        dir: &Path,
        from: u64,
        max_segment_bytes: u64,
        mut replay: impl FnMut(u64, RecordKind, &[u8]),
    ) -> io::Result<(Self, Recovery)> {
        fs::create_dir_all(dir)?;
        remove_leftovers(dir)?;
        let bases = segments(dir)?;
        let mut recovery = Recovery::default();
        let mut next_seq = from;
        let mut last: Option<(u64, u64)> = None; // (base, valid length)
        for (i, &base) in bases.iter().enumerate() {
            // A segment followed by one starting at or below `from` holds
            // only records below it (covered by the snapshot): it is not
            // read, so damage there never cuts the log after it.
            if bases.get(i + 1).is_some_and(|&next| next <= from) {
                continue;
            }
            let mut bytes = Vec::new();
            File::open(segment_path(dir, base))?.read_to_end(&mut bytes)?;
            let mut seq = base;
            let valid = scan(&bytes, |kind, payload| {
                if seq >= from {
                    replay(seq, kind, payload);
                    recovery.replayed += 1;
                }
                seq += 1;
            });
            next_seq = next_seq.max(seq);
            last = Some((base, valid as u64));
            if valid < bytes.len() {
                // A torn or corrupt tail: cut it, and anything after it.
                recovery.truncated_bytes += (bytes.len() - valid) as u64;
                OpenOptions::new()
                    .write(true)
                    .open(segment_path(dir, base))?
                    .set_len(valid as u64)?;
                for &later in &bases[i + 1..] {
                    recovery.truncated_bytes += fs::metadata(segment_path(dir, later))?.len();
                    fs::remove_file(segment_path(dir, later))?;
                    recovery.dropped_segments += 1;
                }
                sync_dir(dir)?;
                break;
            }
        }
        let (segment_base, segment_len) = match last {
            Some(l) => l,
            None => {
                File::create(segment_path(dir, next_seq))?;
                sync_dir(dir)?;
                (next_seq, 0)
            }
        };
        let file = OpenOptions::new().append(true).open(segment_path(dir, segment_base))?;
        file.sync_data()?;
        recovery.next_seq = next_seq;
        Ok((
            Self {
                dir: dir.to_owned(),
                file,
                segment_base,
                segment_len,
                max_segment_bytes,
                next_seq,
                pending: Vec::with_capacity(1 << 20),
                pending_records: 0,
            },
            recovery,
        ))
    }

    /// Buffers one record; returns its sequence number. Not durable until `commit`.
    pub fn append(&mut self, kind: RecordKind, payload: &[u8]) -> u64 {
        encode(&mut self.pending, kind, payload);
        self.pending_records += 1;
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Appends already framed records (`count` of them); returns the first's seq.
    pub fn append_framed(&mut self, framed: &[u8], count: u64) -> u64 {
        self.pending.extend_from_slice(framed);
        self.pending_records += count;
        let seq = self.next_seq;
        self.next_seq += count;
        seq
    }

    /// Writes the buffered records and waits for them to reach the disk.
    /// On error nothing buffered may be acknowledged; the caller stops.
    pub fn commit(&mut self) -> io::Result<()> {
        self.write_out(true)
    }

    /// Writes the buffered records without waiting for the disk: they
    /// become durable with the next [`LogWriter::commit`]. For records
    /// nobody waits on (clock ticks).
    pub fn write_unsynced(&mut self) -> io::Result<()> {
        self.write_out(false)
    }

    /// Makes everything written durable, unsynced records included (at
    /// shutdown).
    pub fn finish(mut self) -> io::Result<()> {
        self.write_out(false)?;
        self.file.sync_data()
    }

    fn write_out(&mut self, sync: bool) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.pending)?;
        if sync {
            self.file.sync_data()?;
        }
        self.segment_len += self.pending.len() as u64;
        self.pending.clear();
        self.pending_records = 0;
        if self.segment_len >= self.max_segment_bytes {
            if !sync {
                // A segment is left only once all of it is durable.
                self.file.sync_data()?;
            }
            self.roll()?;
        }
        Ok(())
    }

    fn roll(&mut self) -> io::Result<()> {
        let path = segment_path(&self.dir, self.next_seq);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        sync_dir(&self.dir)?;
        self.file = file;
        self.segment_base = self.next_seq;
        self.segment_len = 0;
        Ok(())
    }

    /// Sequence number the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Total bytes in segment files.
    pub fn disk_bytes(&self) -> u64 {
        segments(&self.dir)
            .unwrap_or_default()
            .iter()
            .filter_map(|b| fs::metadata(segment_path(&self.dir, *b)).ok())
            .map(|m| m.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("deskpulse-log-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn read_all(dir: &Path, from: u64) -> (Vec<(u64, Vec<u8>)>, Recovery) {
        let mut got = Vec::new();
        let (_, rec) = LogWriter::open(dir, from, 1 << 20, |seq, _, p| got.push((seq, p.to_vec()))).unwrap();
        (got, rec)
    }

    #[test]
    fn records_survive_reopen_across_segments() {
        let dir = temp_dir("reopen");
        let (mut w, _) = LogWriter::open(&dir, 0, 200, |_, _, _| {}).unwrap();
        for i in 0..50u64 {
            assert_eq!(w.append(RecordKind::Event, format!("event-{i}").as_bytes()), i);
            if i % 7 == 0 {
                w.commit().unwrap();
            }
        }
        w.commit().unwrap();
        assert!(segments(&dir).unwrap().len() > 3, "small segments roll");
        drop(w);
        let (got, rec) = read_all(&dir, 0);
        assert_eq!(got.len(), 50);
        assert_eq!(got[49], (49, b"event-49".to_vec()));
        assert_eq!(rec.next_seq, 50);
        let (from_20, _) = read_all(&dir, 20);
        assert_eq!(from_20.first().unwrap().0, 20);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_torn_tail_is_cut_and_the_prefix_kept() {
        let dir = temp_dir("torn");
        let (mut w, _) = LogWriter::open(&dir, 0, 1 << 30, |_, _, _| {}).unwrap();
        for i in 0..5u64 {
            w.append(RecordKind::Event, format!("record number {i}").as_bytes());
        }
        w.commit().unwrap();
        drop(w);
        let path = segment_path(&dir, 0);
        let full = fs::read(&path).unwrap();
        let frame = full.len() / 5;
        // Cut at every byte offset of the last two records, and flip bits.
        for cut in (3 * frame)..full.len() {
            fs::write(&path, &full[..cut]).unwrap();
            let (got, rec) = read_all(&dir, 0);
            assert_eq!(got.len(), cut / frame, "cut at {cut}");
            assert_eq!(rec.truncated_bytes as usize, cut % frame);
            assert_eq!(fs::metadata(&path).unwrap().len() as usize, (cut / frame) * frame);
        }
        for bit in 0..(frame * 8) {
            let mut damaged = full.clone();
            damaged[4 * frame + bit / 8] ^= 1 << (bit % 8);
            fs::write(&path, &damaged).unwrap();
            let (got, _) = read_all(&dir, 0);
            assert_eq!(
                got.len(),
                4,
                "bit {bit}: the damaged last record is dropped, never parsed"
            );
        }
        // Appending after a cut continues the sequence.
        fs::write(&path, &full[..4 * frame + 3]).unwrap();
        let (mut w, rec) = LogWriter::open(&dir, 0, 1 << 30, |_, _, _| {}).unwrap();
        assert_eq!(rec.next_seq, 4);
        assert_eq!(w.append(RecordKind::Event, b"after"), 4);
        w.commit().unwrap();
        drop(w);
        let (got, _) = read_all(&dir, 0);
        assert_eq!(got.last().unwrap(), &(4, b"after".to_vec()));
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A log of 40 committed records, in segments of 100 bytes (two or
    /// three records each), still open for writing.
    fn log_of_40_records(name: &str) -> (PathBuf, LogWriter) {
        let dir = temp_dir(name);
        let (mut w, _) = LogWriter::open(&dir, 0, 100, |_, _, _| {}).unwrap();
        for _ in 0..40 {
            w.append(RecordKind::Event, b"0123456789012345678901234567890123456789");
            w.commit().unwrap();
        }
        (dir, w)
    }

    #[test]
    fn a_big_file_is_removed_in_steps() {
        let dir = temp_dir("remove-steps");
        fs::create_dir_all(&dir).unwrap();
        for (name, len) in [("big", 3 * REMOVE_STEP_BYTES + 5), ("small", 10), ("empty", 0)] {
            let path = dir.join(name);
            File::create(&path).unwrap().set_len(len).unwrap();
            remove_gradually(&path).unwrap();
            assert!(!path.exists(), "{name} is gone");
        }
        let err = remove_gradually(&dir.join("never-there")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// What `kill -9` during a removal once left: a covered segment cut
    /// short under its own name. Recovery from the snapshot's position
    /// keeps every record after it.
    #[test]
    fn a_covered_segment_cut_short_does_not_cut_the_log_after_it() {
        let (dir, w) = log_of_40_records("covered-cut");
        drop(w);
        let bases = segments(&dir).unwrap();
        assert!(bases.len() > 4);
        let first = segment_path(&dir, bases[0]);
        let len = fs::metadata(&first).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&first)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        let from = bases[2];
        let (got, rec) = read_all(&dir, from);
        assert_eq!(got.len() as u64, 40 - from, "every record from {from} on is replayed");
        assert_eq!((rec.truncated_bytes, rec.dropped_segments), (0, 0));
        assert_eq!(segments(&dir).unwrap(), bases);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_removal_renames_first_and_a_leftover_is_cleared_at_open() {
        let (dir, w) = log_of_40_records("retire");
        drop(w);
        let bases = segments(&dir).unwrap();
        // A crash right after the rename: the segment is out of the log.
        let retired = retire(&segment_path(&dir, bases[0])).unwrap();
        assert!(retired.exists());
        assert_eq!(segments(&dir).unwrap(), bases[1..]);
        let (got, _) = read_all(&dir, bases[1]);
        assert_eq!(got.len() as u64, 40 - bases[1]);
        assert!(!retired.exists(), "opening the log removes the leftover");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_open_segment_is_never_removed() {
        let (dir, mut w) = log_of_40_records("remove-open");
        // A snapshot "past everything" still leaves the segment being written.
        remove_segments_before(&dir, u64::MAX).unwrap();
        assert_eq!(segments(&dir).unwrap().len(), 1);
        w.append(RecordKind::Event, b"after");
        w.commit().unwrap();
        drop(w);
        let (got, _) = read_all(&dir, 0);
        assert_eq!(got.last().unwrap().0, 40, "the log goes on in the open segment");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn segments_below_a_snapshot_are_removed() {
        let (dir, w) = log_of_40_records("remove");
        let before = segments(&dir).unwrap().len();
        let removed = remove_segments_before(&dir, 20).unwrap();
        assert!(removed > 0);
        assert_eq!(segments(&dir).unwrap().len(), before - removed as usize);
        drop(w);
        let (got, _) = read_all(&dir, 20);
        assert_eq!(got.first().unwrap().0, 20, "nothing at or above the snapshot is lost");
        assert_eq!(got.len(), 20);
        fs::remove_dir_all(&dir).unwrap();
    }
}
