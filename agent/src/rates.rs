//! Turning kernel counters into rates: deltas, 32-bit wraps, resets,
//! per-device state and the aggregation rules of the rate metrics.
//!
//! Rules (the metric definitions of the agent):
//! - A rate divides a delta by the real elapsed time between the two
//!   readings of that device, from a monotonic clock passed in by the
//!   caller, never by the configured interval.
//! - A counter that goes backwards is a 32-bit wrap when both readings fit
//!   in 32 bits and the wrapped delta is below [`MAX_PLAUSIBLE_WRAP_DELTA`]
//!   (half the counter space, the usual SNMP convention: a counter cannot
//!   be told apart from one that wrapped twice, so we assume the smaller
//!   story); anything else is a reset (device re-created, counters
//!   cleared) and the device's contribution for that interval is dropped.
//!   Never a negative value, never a spike.
//! - A rate metric is the sum over qualifying devices with a valid delta.
//!   Devices exist but none has a valid delta (all new, or reset): the
//!   metric is omitted. No qualifying device at all: the rate is 0.
//! - A device that disappears from the file is forgotten, so hot-plugged
//!   disks and short-lived interfaces do not grow state forever.
//!
//! Must never read a clock itself, do I/O, or allocate per tick for a device
//! it already knows. Devices are kept in a `Vec` in the file's order: the
//! kernel lists them in the same order every tick, so the next device is
//! almost always in the slot after the last one found, and a tick costs one
//! name comparison per device (no hashing); a device out of place is found
//! by a search of at most the devices known.

use std::time::{Duration, Instant};

use crate::proc::stat::CpuTimes;

/// The largest delta accepted as a 32-bit wrap: 2^31, half the 32-bit
/// counter space.
pub const MAX_PLAUSIBLE_WRAP_DELTA: u64 = 1 << 31;

/// How a counter moved between two readings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterDelta {
    /// It grew by this much (or stayed put).
    Advanced(u64),
    /// It passed 2^32 and started again from 0; this much in total.
    Wrapped(u64),
    /// It went backwards in a way no wrap explains: no delta this interval.
    Reset,
}

impl CounterDelta {
    /// The delta, unless the counter was reset.
    pub fn value(self) -> Option<u64> {
        match self {
            CounterDelta::Advanced(d) | CounterDelta::Wrapped(d) => Some(d),
            CounterDelta::Reset => None,
        }
    }
}

/// Classifies the move of a counter from `previous` to `current`.
pub fn counter_delta(previous: u64, current: u64) -> CounterDelta {
    if current >= previous {
        return CounterDelta::Advanced(current - previous);
    }
    let limit = u64::from(u32::MAX);
    if previous <= limit && current <= limit {
        let wrapped = (limit - previous) + current + 1;
        if wrapped < MAX_PLAUSIBLE_WRAP_DELTA {
            return CounterDelta::Wrapped(wrapped);
        }
    }
    CounterDelta::Reset
}

/// Busy share of CPU time between two readings of /proc/stat, 0 to 100:
/// 100 × Δbusy / Δtotal. `None` when no time passed (Δtotal = 0) or when the
/// total or busy time went backwards (a counter reset or a kernel quirk:
/// iowait is known to decrease on tickless kernels).
pub fn cpu_percent(previous: &CpuTimes, current: &CpuTimes) -> Option<f64> {
    let total = current.total_ticks().checked_sub(previous.total_ticks())?;
    let busy = current.busy_ticks().checked_sub(previous.busy_ticks())?;
    if total == 0 {
        return None;
    }
    Some((busy as f64 * 100.0 / total as f64).clamp(0.0, 100.0))
}

/// KiB/s (1024 bytes per second) for `bytes` over `elapsed`.
pub fn kib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1024.0 / elapsed.as_secs_f64()
}

/// Accumulates one rate metric over the devices of one tick.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RateSum {
    /// Qualifying devices seen this tick.
    pub devices: u32,
    /// Of those, devices with a valid delta.
    pub valid_devices: u32,
    /// Sum of the valid devices' rates.
    pub kib_per_s: f64,
}

impl RateSum {
    /// The metric under the aggregation rules: 0 without qualifying
    /// devices, omitted when none had a valid delta, else the sum.
    pub fn value(&self) -> Option<f64> {
        if self.devices == 0 {
            Some(0.0)
        } else if self.valid_devices == 0 {
            None
        } else {
            Some(self.kib_per_s)
        }
    }
}

/// What the tracker keeps per device name.
#[derive(Clone, Debug)]
struct DeviceState {
    /// The name as the kernel prints it (bytes: /proc never promises UTF-8,
    /// and the name is only compared and, once, looked up in /sys).
    name: Box<[u8]>,
    /// Whether the device counts towards the metrics (decided once).
    qualifies: bool,
    /// The counters at the last reading, in the file's own units.
    counters: [u64; 2],
    /// When they were read.
    read_at: Instant,
    /// The tick that last saw this device.
    seen_in_tick: u64,
    /// Where in that tick's file it was met (0 for the first device).
    order: usize,
}

/// The time between two readings, worked out once per tick: every device
/// of a file is read at the same instant, and was last read at the same one.
#[derive(Debug, Default)]
struct ElapsedMemo {
    last: Option<(Instant, Instant, Option<Duration>)>,
}

impl ElapsedMemo {
    /// `now - read_at`, or `None` when time went backwards.
    fn between(&mut self, read_at: Instant, now: Instant) -> Option<Duration> {
        match self.last {
            Some((from, to, elapsed)) if from == read_at && to == now => elapsed,
            _ => {
                let elapsed = now.checked_duration_since(read_at);
                self.last = Some((read_at, now, elapsed));
                elapsed
            }
        }
    }
}

/// Per-device counters of one file (/proc/diskstats or /proc/net/dev), two
/// counters per device (read/written, received/transmitted), turned into two
/// rate metrics per tick.
///
/// Call [`begin_tick`](Self::begin_tick), then [`observe`](Self::observe)
/// for each device line, then [`end_tick`](Self::end_tick), which forgets
/// the devices that were not observed and returns the two metrics.
#[derive(Debug)]
pub struct DeviceTracker {
    /// Known devices, in the order of the file when they were first seen.
    devices: Vec<DeviceState>,
    /// Where the next observed device is expected: the slot after the last
    /// one found this tick.
    cursor: usize,
    /// Bytes per unit of the counters (512 for sectors, 1 for bytes).
    unit_bytes: u64,
    tick: u64,
    /// Devices observed this tick (duplicates not counted).
    observed: usize,
    /// Whether a device was added this tick or one was met out of place:
    /// then `end_tick` puts them back in this tick's file order.
    reorder: bool,
    elapsed: ElapsedMemo,
    sums: [RateSum; 2],
}

impl DeviceTracker {
    /// A tracker whose counters count units of `unit_bytes` bytes.
    pub fn new(unit_bytes: u64) -> DeviceTracker {
        DeviceTracker {
            devices: Vec::new(),
            cursor: 0,
            unit_bytes,
            tick: 0,
            observed: 0,
            reorder: false,
            elapsed: ElapsedMemo::default(),
            sums: [RateSum::default(); 2],
        }
    }

    /// Starts a tick (a successful read of the file).
    pub fn begin_tick(&mut self) {
        self.tick += 1;
        self.cursor = 0;
        self.observed = 0;
        self.reorder = false;
        self.sums = [RateSum::default(); 2];
    }

    /// The slot of device `name`: the expected one first, else a search.
    fn find(&self, name: &[u8]) -> Option<usize> {
        if self
            .devices
            .get(self.cursor)
            .is_some_and(|d| *d.name == *name)
        {
            return Some(self.cursor);
        }
        self.devices.iter().position(|d| *d.name == *name)
    }

    /// Records the counters of device `name` read at `now`. `qualifies` is
    /// called only the first time a name is seen (it may read /sys).
    pub fn observe(
        &mut self,
        name: &[u8],
        counters: [u64; 2],
        now: Instant,
        qualifies: impl FnOnce(&[u8]) -> bool,
    ) {
        let tick = self.tick;
        let order = self.observed;
        let Some(slot) = self.find(name) else {
            let qualifies = qualifies(name);
            if qualifies {
                for sum in &mut self.sums {
                    sum.devices += 1;
                }
            }
            // Appended, then put in file order by `end_tick`.
            self.devices.push(DeviceState {
                name: name.into(),
                qualifies,
                counters,
                read_at: now,
                seen_in_tick: tick,
                order,
            });
            self.observed += 1;
            self.reorder = true;
            self.cursor = self.devices.len();
            return;
        };
        let state = &mut self.devices[slot];
        if state.seen_in_tick == tick {
            // The same name twice in one file: keep the first line (and
            // the cursor, which still points at the next device).
            return;
        }
        if slot != self.cursor {
            self.reorder = true;
        }
        self.cursor = slot + 1;
        self.observed += 1;
        state.seen_in_tick = tick;
        state.order = order;
        let previous = std::mem::replace(&mut state.counters, counters);
        let read_at = std::mem::replace(&mut state.read_at, now);
        if !state.qualifies {
            return;
        }
        let elapsed = self.elapsed.between(read_at, now);
        for ((sum, before), after) in self.sums.iter_mut().zip(previous).zip(counters) {
            sum.devices += 1;
            let (Some(delta), Some(elapsed)) = (counter_delta(before, after).value(), elapsed)
            else {
                continue;
            };
            if elapsed.is_zero() {
                continue;
            }
            sum.valid_devices += 1;
            sum.kib_per_s += kib_per_s(delta.saturating_mul(self.unit_bytes), elapsed);
        }
    }

    /// Ends the tick: forgets devices not observed in it, puts the rest in
    /// this tick's file order when it changed, and returns the two rate
    /// metrics (first counter, second counter).
    pub fn end_tick(&mut self) -> [Option<f64>; 2] {
        let tick = self.tick;
        if self.observed != self.devices.len() {
            self.devices.retain(|state| state.seen_in_tick == tick);
        }
        if self.reorder {
            // Every device left was seen this tick, so the keys are
            // distinct and an unstable sort (which does not allocate) is
            // exact.
            self.devices.sort_unstable_by_key(|state| state.order);
        }
        [self.sums[0].value(), self.sums[1].value()]
    }

    /// Devices currently remembered (qualifying or not).
    pub fn known_devices(&self) -> usize {
        self.devices.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_delta_tells_wraps_from_resets() {
        fn check(previous: u64, current: u64, expected: CounterDelta) {
            assert_eq!(
                counter_delta(previous, current),
                expected,
                "{previous} -> {current}"
            );
        }
        let max32 = u64::from(u32::MAX);
        check(10, 25, CounterDelta::Advanced(15));
        check(7, 7, CounterDelta::Advanced(0));
        // 2^32 − 100 → 50 on a 32-bit counter: 100 + 50 = 150.
        check(max32 + 1 - 100, 50, CounterDelta::Wrapped(150));
        check(max32, 0, CounterDelta::Wrapped(1));
        // A wrap of 2^31 or more is not plausible: reset.
        check(max32 + 1 - 100, (1 << 31) - 100, CounterDelta::Reset);
        check(
            max32 + 1 - 100,
            (1 << 31) - 101,
            CounterDelta::Wrapped((1 << 31) - 1),
        );
        // A small counter going backwards is a reset (interface re-created).
        check(5_000, 100, CounterDelta::Reset);
        // 64-bit counters never wrap in practice: going backwards is a reset.
        check(max32 + 10, 5, CounterDelta::Reset);
    }

    fn cpu(user: u64, idle: u64, iowait: u64) -> CpuTimes {
        CpuTimes {
            user_ticks: user,
            idle_ticks: idle,
            iowait_ticks: Some(iowait),
            ..CpuTimes::default()
        }
    }

    #[test]
    fn cpu_percent_is_busy_over_total_and_omitted_when_meaningless() {
        fn check(previous: CpuTimes, current: CpuTimes, expected: Option<f64>) {
            assert_eq!(cpu_percent(&previous, &current), expected);
        }
        check(cpu(100, 100, 0), cpu(125, 175, 0), Some(25.0));
        // iowait is not busy: 10 busy of 40.
        check(cpu(0, 0, 0), cpu(10, 20, 10), Some(25.0));
        check(cpu(100, 100, 0), cpu(100, 100, 0), None);
        check(cpu(100, 100, 0), cpu(50, 100, 0), None);
        // Busy went backwards (iowait decreased by more than idle grew).
        check(cpu(10, 10, 10), cpu(9, 20, 10), None);
        // Tickless iowait: iowait steps back by 5 while busy grows by 10,
        // so Δbusy (10) exceeds Δtotal (5); the share stops at 100.
        check(cpu(0, 100, 50), cpu(10, 100, 45), Some(100.0));
        // The same through idle stepping back.
        check(cpu(0, 100, 0), cpu(10, 95, 0), Some(100.0));
        // All of the interval busy is exactly 100.
        check(cpu(0, 100, 0), cpu(40, 100, 0), Some(100.0));
    }

    #[test]
    fn the_same_name_twice_in_one_file_counts_once_with_its_first_line() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let mut tracker = DeviceTracker::new(1);
        tracker.begin_tick();
        tracker.observe(b"eth0", [0, 0], t0, |_| true);
        tracker.observe(b"eth0", [5_000, 5_000], t0, |_| true);
        assert_eq!(tracker.end_tick(), [None, None], "first sighting");
        assert_eq!(tracker.known_devices(), 1);

        // The first line (1 KiB, 2 KiB) counts; the second is not added,
        // and does not replace the first as the next tick's baseline.
        tracker.begin_tick();
        tracker.observe(b"eth0", [1024, 2048], t1, |_| true);
        tracker.observe(b"eth0", [1024 * 100, 2048 * 100], t1, |_| true);
        assert_eq!(tracker.end_tick(), [Some(1.0), Some(2.0)]);

        tracker.begin_tick();
        tracker.observe(b"eth0", [2048, 4096], t1 + Duration::from_secs(1), |_| true);
        assert_eq!(tracker.end_tick(), [Some(1.0), Some(2.0)]);
    }

    #[test]
    fn known_devices_counts_every_remembered_name() {
        fn check(tracker: &DeviceTracker, expected: usize) {
            assert_eq!(tracker.known_devices(), expected);
        }
        let t0 = Instant::now();
        let mut tracker = DeviceTracker::new(1);
        check(&tracker, 0);
        tracker.begin_tick();
        tracker.observe(b"eth0", [0, 0], t0, |_| true);
        tracker.observe(b"lo", [0, 0], t0, |_| false);
        tracker.observe(b"wlan0", [0, 0], t0, |_| true);
        tracker.end_tick();
        check(&tracker, 3);
        tracker.begin_tick();
        tracker.observe(b"wlan0", [0, 0], t0, |_| true);
        tracker.observe(b"lo", [0, 0], t0, |_| false);
        tracker.end_tick();
        check(&tracker, 2);
        // A tick that saw nothing (every device gone) forgets them all.
        tracker.begin_tick();
        assert_eq!(tracker.end_tick(), [Some(0.0), Some(0.0)]);
        check(&tracker, 0);
    }

    #[test]
    fn tracker_aggregates_and_forgets() {
        let t0 = Instant::now();
        let mut tracker = DeviceTracker::new(512);
        let yes = |_: &[u8]| true;

        tracker.begin_tick();
        tracker.observe(b"sda", [0, 0], t0, yes);
        tracker.observe(b"sdb", [100, 0], t0, yes);
        assert_eq!(
            tracker.end_tick(),
            [None, None],
            "first sighting has no rate"
        );

        // 2 s later: sda read 2048 sectors (1 MiB → 512 KiB/s); sdb's read
        // counter was reset (dropped), its write counter still counts.
        tracker.begin_tick();
        tracker.observe(b"sda", [2048, 0], t0 + Duration::from_secs(2), yes);
        tracker.observe(b"sdb", [0, 0], t0 + Duration::from_secs(2), yes);
        assert_eq!(tracker.end_tick(), [Some(512.0), Some(0.0)]);

        // sdb vanishes and is forgotten; a classifier is not asked again for sda.
        tracker.begin_tick();
        tracker.observe(b"sda", [2048, 0], t0 + Duration::from_secs(3), |_| {
            panic!("sda is already classified")
        });
        assert_eq!(tracker.end_tick(), [Some(0.0), Some(0.0)]);
        assert_eq!(tracker.known_devices(), 1);

        // No qualifying device at all: 0, not omitted.
        tracker.begin_tick();
        tracker.observe(b"loop0", [1, 1], t0 + Duration::from_secs(4), |_| false);
        assert_eq!(tracker.end_tick(), [Some(0.0), Some(0.0)]);
        assert_eq!(tracker.known_devices(), 1, "sda gone, loop0 remembered");
    }

    #[test]
    fn a_reset_device_is_dropped_but_others_still_count() {
        let t0 = Instant::now();
        let mut tracker = DeviceTracker::new(1);
        tracker.begin_tick();
        tracker.observe(b"eth0", [10_000, 10_000], t0, |_| true);
        tracker.observe(b"wlan0", [10_000, 10_000], t0, |_| true);
        tracker.end_tick();
        tracker.begin_tick();
        let t1 = t0 + Duration::from_millis(500);
        tracker.observe(b"eth0", [10_000 + 1024, 10_000 + 2048], t1, |_| true);
        tracker.observe(b"wlan0", [3, 3], t1, |_| true);
        assert_eq!(tracker.end_tick(), [Some(2.0), Some(4.0)]);
    }

    #[test]
    fn zero_or_backwards_elapsed_time_gives_no_rate() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(1);
        let mut tracker = DeviceTracker::new(1);
        tracker.begin_tick();
        tracker.observe(b"eth0", [0, 0], later, |_| true);
        tracker.end_tick();
        tracker.begin_tick();
        tracker.observe(b"eth0", [10, 10], later, |_| true);
        assert_eq!(tracker.end_tick(), [None, None]);
        tracker.begin_tick();
        tracker.observe(b"eth0", [20, 20], t0, |_| true);
        assert_eq!(tracker.end_tick(), [None, None]);
    }

    #[test]
    fn devices_that_move_appear_or_vanish_are_still_found_once() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut tracker = DeviceTracker::new(1);
        tracker.begin_tick();
        for name in [&b"a"[..], b"b", b"c"] {
            tracker.observe(name, [0, 0], at(0), |_| true);
        }
        tracker.end_tick();

        // The file's order changes and a device appears in the middle:
        // each known device gives its rate once, the new one none yet.
        tracker.begin_tick();
        tracker.observe(b"c", [1024, 0], at(1), |_| panic!("c is known"));
        tracker.observe(b"new", [9, 9], at(1), |_| true);
        tracker.observe(b"a", [2048, 0], at(1), |_| panic!("a is known"));
        tracker.observe(b"b", [4096, 0], at(1), |_| panic!("b is known"));
        assert_eq!(tracker.end_tick(), [Some(7.0), Some(0.0)]);
        assert_eq!(tracker.known_devices(), 4);

        // In that new order again; "a" vanishes and is forgotten.
        tracker.begin_tick();
        tracker.observe(b"c", [2048, 0], at(2), |_| panic!("c is known"));
        tracker.observe(b"new", [9 + 1024, 9], at(2), |_| panic!("new is known"));
        tracker.observe(b"b", [4096, 0], at(2), |_| panic!("b is known"));
        assert_eq!(tracker.end_tick(), [Some(2.0), Some(0.0)]);
        assert_eq!(tracker.known_devices(), 3);

        // "a" comes back: a new device again, classified again.
        tracker.begin_tick();
        tracker.observe(b"a", [0, 0], at(3), |_| true);
        tracker.observe(b"c", [2048, 0], at(3), |_| panic!("c is known"));
        assert_eq!(tracker.end_tick(), [Some(0.0), Some(0.0)]);
        assert_eq!(tracker.known_devices(), 2);
    }
}
