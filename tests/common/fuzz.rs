//! A small, dependency-free mutation fuzzer that runs inside `cargo test`
//! on the stable toolchain.
//!
//! Why not cargo-fuzz here: it needs nightly and a separately installed
//! `cargo fuzz`, which a plain `cargo test` (and a fresh CI machine) does
//! not have. This engine takes real inputs (fixtures, encoded messages) as
//! seeds and applies the mutations that find parser bugs: bit flips, bytes
//! that mean something to a parser (newline, colon, digits, 0xff), long
//! digit runs that overflow integers, inserted/deleted/duplicated ranges,
//! truncation and splicing of two seeds. Each target runs for a bounded
//! number of inputs (`MONITOR_FUZZ_ITERS`, more under
//! `MONITOR_SLOW_TESTS=1`) and a time cap. Runs are reproducible:
//! the seed is printed and `MONITOR_FUZZ_SEED` replays it; a failing input
//! is written under `target/fuzz-failures/` and printed in hex.
//!
//! It must never read anything but its seeds and never run without a
//! bound.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Bytes that mean something to the parsers under test.
const INTERESTING: &[u8] = b"\n\n\r\t :::0123456789-+.e\0\xff\x7f\x80 #\"\\";
/// Digit runs that overflow u32, u64 and i64 or are otherwise odd numbers.
const NUMBERS: &[&[u8]] = &[
    b"4294967296",
    b"18446744073709551615",
    b"18446744073709551616",
    b"99999999999999999999999999",
    b"9223372036854775807",
    b"-1",
    b"0",
    b"NaN",
    b"inf",
    b"1e308",
];

/// A reproducible stream of mutated inputs.
pub struct Fuzzer {
    state: u64,
    seed: u64,
    /// Inputs per target.
    pub iterations: usize,
    /// Wall-clock cap per target, so a slow machine still finishes.
    pub time_cap: Duration,
}

impl Fuzzer {
    /// Seed from `MONITOR_FUZZ_SEED` (else random, printed), inputs from
    /// `MONITOR_FUZZ_ITERS` (else `default_iterations`, ×20 with
    /// `MONITOR_SLOW_TESTS=1`).
    pub fn from_env(default_iterations: usize) -> Fuzzer {
        let seed = std::env::var("MONITOR_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(monitor::random::random_u64)
            | 1;
        let slow = std::env::var("MONITOR_SLOW_TESTS").is_ok_and(|v| v == "1");
        let iterations = std::env::var("MONITOR_FUZZ_ITERS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(if slow {
                default_iterations * 20
            } else {
                default_iterations
            });
        println!("fuzz: MONITOR_FUZZ_SEED={seed} MONITOR_FUZZ_ITERS={iterations}");
        Fuzzer {
            state: seed,
            seed,
            iterations,
            time_cap: Duration::from_secs(if slow { 600 } else { 20 }),
        }
    }

    /// The next number of the seeded sequence (also for tests that draw
    /// their own random inputs, e.g. `tests/wire_encode.rs`).
    pub fn next(&mut self) -> u64 {
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    /// One to four mutations of `input`, capped at `max_len` bytes.
    pub fn mutate(&mut self, input: &mut Vec<u8>, seeds: &[Vec<u8>], max_len: usize) {
        for _ in 0..=self.below(4) {
            let len = input.len();
            match self.below(10) {
                0 if len > 0 => {
                    let i = self.below(len);
                    input[i] ^= 1 << self.below(8);
                }
                1 if len > 0 => {
                    let i = self.below(len);
                    input[i] = INTERESTING[self.below(INTERESTING.len())];
                }
                2 => {
                    let i = self.below(len + 1);
                    let b = INTERESTING[self.below(INTERESTING.len())];
                    input.insert(i, b);
                }
                3 if len > 0 => {
                    let start = self.below(len);
                    let end = (start + 1 + self.below(16)).min(len);
                    input.drain(start..end);
                }
                4 if len > 0 => {
                    let start = self.below(len);
                    let end = (start + 1 + self.below(64)).min(len);
                    let copy: Vec<u8> = input[start..end].to_vec();
                    let at = self.below(len + 1);
                    input.splice(at..at, copy);
                }
                5 => {
                    // Overwrite a digit run (or insert) with an odd number.
                    let n = NUMBERS[self.below(NUMBERS.len())];
                    let at = self.below(len + 1);
                    let mut end = at;
                    while end < input.len() && input[end].is_ascii_digit() {
                        end += 1;
                    }
                    input.splice(at..end, n.iter().copied());
                }
                6 if len > 0 => {
                    input.truncate(self.below(len));
                }
                7 if !seeds.is_empty() => {
                    // Splice: our head, another seed's tail.
                    let other = &seeds[self.below(seeds.len())];
                    let cut = self.below(len + 1);
                    let from = self.below(other.len() + 1);
                    input.truncate(cut);
                    input.extend_from_slice(&other[from..]);
                }
                8 if len > 0 => {
                    let i = self.below(len);
                    input[i] = self.next() as u8;
                }
                _ => {
                    // A random little-endian word: lengths and counts in
                    // binary formats.
                    let at = self.below(len + 1);
                    let word = self.next().to_le_bytes();
                    let n = 1 + self.below(8);
                    input.splice(at..(at + n).min(input.len()), word[..n].iter().copied());
                }
            }
        }
        input.truncate(max_len);
    }

    /// Feeds `target` every seed, then mutated inputs until the iteration
    /// count or the time cap is reached; returns how many inputs ran. A
    /// panic in `target` is reported with the input that caused it.
    pub fn run(
        &mut self,
        name: &str,
        seeds: &[Vec<u8>],
        max_len: usize,
        mut target: impl FnMut(&[u8]),
    ) -> usize {
        let started = Instant::now();
        let mut ran = 0;
        let mut input = Vec::with_capacity(max_len);
        for i in 0..seeds.len() + self.iterations {
            if i >= seeds.len() && started.elapsed() > self.time_cap {
                break;
            }
            input.clear();
            if i < seeds.len() {
                input.extend_from_slice(&seeds[i]);
                input.truncate(max_len);
            } else {
                let base = self.below(seeds.len().max(1));
                if let Some(s) = seeds.get(base) {
                    input.extend_from_slice(s);
                }
                self.mutate(&mut input, seeds, max_len);
            }
            if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
                let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
                let _ = std::fs::create_dir_all(&dir);
                let file = dir.join(format!("{name}-{}-{i}", self.seed));
                let _ = std::fs::write(&file, &input);
                let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
                panic!(
                    "fuzz target {name} panicked on input {i} (seed {}), saved to {}: {hex}",
                    self.seed,
                    file.display()
                );
            }
            ran += 1;
        }
        println!(
            "fuzz {name}: {ran} inputs in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        ran
    }
}
