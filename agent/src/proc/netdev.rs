//! Parser for /proc/net/dev, one result per interface line so that one bad
//! line never hides the others.
//!
//! The file has two header lines, then one `name: 16 numbers` line per
//! interface (eight receive counters, eight transmit counters). Old kernels
//! print no space after the colon when the number is wide (`eth0:123 ...`),
//! so the name ends at the first colon, not at whitespace; interface names
//! cannot contain a colon (the kernel's `dev_valid_name` refuses it).
//! Numbers beyond the sixteenth are ignored; of the sixteen, only the two
//! byte counters are validated, since no other is ever read.
//!
//! Must never do I/O and never allocate unless it returns an error.

use super::{Fields, Lines, ParseError, ParseErrorKind, field_u64, find_byte};

const FILE: &str = "/proc/net/dev";

/// Lines before the first interface.
const HEADER_LINES: usize = 2;

/// Field names, for errors (the kernel's header, made unique).
const FIELDS: [&str; 16] = [
    "rx_bytes",
    "rx_packets",
    "rx_errs",
    "rx_drop",
    "rx_fifo",
    "rx_frame",
    "rx_compressed",
    "rx_multicast",
    "tx_bytes",
    "tx_packets",
    "tx_errs",
    "tx_drop",
    "tx_fifo",
    "tx_colls",
    "tx_carrier",
    "tx_compressed",
];

/// The byte counters of one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetDevStat<'a> {
    /// Interface name, e.g. `eth0`, `wlan0`, `lo`, as the kernel's bytes
    /// (any but `/`, `:` and whitespace: not necessarily UTF-8, and never
    /// checked on the tick; the name is only compared, and looked up in
    /// /sys once).
    pub name: &'a [u8],
    /// Bytes received since the interface appeared (may wrap at 2^32 on
    /// 32-bit kernels with drivers that keep `unsigned long` counters).
    pub rx_bytes: u64,
    /// Bytes transmitted since the interface appeared (same caveat).
    pub tx_bytes: u64,
}

/// Parses every interface line of /proc/net/dev (after the two header
/// lines, blank lines skipped); line numbers in errors are 1-based.
pub fn parse(text: &[u8]) -> impl Iterator<Item = Result<NetDevStat<'_>, ParseError>> + '_ {
    Lines::new(text)
        .skip(HEADER_LINES)
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .map(|(line_no, line)| parse_line(line, line_no))
}

/// Parses one interface line (`line_no` is 1-based, for errors).
pub fn parse_line(line: &[u8], line_no: usize) -> Result<NetDevStat<'_>, ParseError> {
    let Some(colon) = find_byte(b':', line) else {
        return Err(ParseError::new(
            FILE,
            Some(line_no),
            "interface",
            ParseErrorKind::Missing,
        ));
    };
    let (name, numbers) = (&line[..colon], &line[colon + 1..]);
    let mut tokens = Fields::new(numbers);
    let mut fields: [&[u8]; 16] = [b""; 16];
    let mut count = 0;
    for (slot, token) in fields.iter_mut().zip(tokens.by_ref()) {
        *slot = token;
        count += 1;
    }
    if count < fields.len() {
        return Err(ParseError::new(
            FILE,
            Some(line_no),
            FIELDS[count],
            ParseErrorKind::Missing,
        ));
    }
    Ok(NetDevStat {
        name: name.trim_ascii(),
        rx_bytes: field_u64(FILE, line_no, FIELDS[0], fields[0])?,
        tx_bytes: field_u64(FILE, line_no, FIELDS[8], fields[8])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proc::check_named_counters;
    use crate::proc::netdev;
    use crate::testing::fixture;

    #[test]
    fn no_space_after_the_colon() {
        let s = parse_line(b"  eth0:4294967295 1 0 0 0 0 0 0 77 1 0 0 0 0 0 0", 3).unwrap();
        assert_eq!(
            (s.name, s.rx_bytes, s.tx_bytes),
            (&b"eth0"[..], 4_294_967_295, 77)
        );
    }

    #[test]
    fn truncated_line_names_the_first_missing_field() {
        let err = parse_line(b"eth0: 1 2 3 4 5 6 7 8 9", 5).unwrap_err();
        assert_eq!((err.line, err.field), (Some(5), "tx_packets"));
    }

    // The captures in tests/fixtures (x86_64, aarch64, armv7; its README.md
    // says where each came from) and broken input: every error must name the
    // file, the 1-based line and the field, and nothing may panic.

    fn check_net(input: impl AsRef<[u8]>, expected: &[Result<(&str, u64, u64), ParseError>]) {
        let input = input.as_ref();
        check_named_counters(
            input,
            netdev::parse(input).map(|r| r.map(|n| (n.name, n.rx_bytes, n.tx_bytes))),
            expected,
        );
    }

    #[test]
    fn netdev_fixtures() {
        check_net(
            fixture("x86_64", "proc/net/dev"),
            &[
                Ok(("lo", 3193, 3193)),
                Ok(("ifb0", 0, 0)),
                Ok(("ifb1", 0, 0)),
                Ok(("eth0", 433239882, 555656)),
            ],
        );
        check_net(
            fixture("aarch64", "proc/net/dev"),
            &[
                Ok(("lo", 98712, 98712)),
                Ok(("eth0", 812736211, 41293015)),
                Ok(("wlan0", 3312092, 712944)),
                Ok(("docker0", 0, 0)),
                Ok(("veth1a2b3c4", 18212, 40119)),
            ],
        );
        check_net(
            fixture("armv7", "proc/net/dev"),
            &[
                Ok(("lo", 391828, 391828)),
                Ok(("eth0", 4294966784, 1863412264)),
                Ok(("wlan0", 0, 0)),
            ],
        );
    }

    const NET_HEADER: &str = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n";

    fn net_error(line: usize, field: &'static str, kind: ParseErrorKind) -> ParseError {
        ParseError {
            file: "/proc/net/dev",
            line: Some(line),
            field,
            kind,
        }
    }

    #[test]
    fn netdev_old_kernel_without_space_after_the_colon() {
        check_net(
            format!(
                "{NET_HEADER}  eth0:1234567890 1 0 0 0 0 0 0 42 1 0 0 0 0 0 0\n    lo:0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 17\n"
            ),
            &[Ok(("eth0", 1234567890, 42)), Ok(("lo", 0, 0))],
        );
    }

    #[test]
    fn netdev_broken_lines_do_not_hide_the_others() {
        let nan = |got: &str| ParseErrorKind::NotAnUnsignedInteger { got: got.into() };
        check_net("", &[]);
        check_net(NET_HEADER, &[]);
        check_net(
            format!(
                "{NET_HEADER}  eth0: 1 0 0 0 0 0 0 0 2 0 0 0 0 0 0 0\n\
                 wlan0 1 0 0 0 0 0 0 0 2 0 0 0 0 0 0 0\n\
                 usb0: 1 0 0\n\
                 eth1: ten 0 0 0 0 0 0 0 2 0 0 0 0 0 0 0\n\
                 eth2: 1 0 0 0 0 0 0 0 2e3 0 0 0 0 0 0 0\n\
                 \n\
                 eth3: 5 0 0 0 0 0 0 0 6 0 0 0 0 0 0 0\n"
            ),
            &[
                Ok(("eth0", 1, 2)),
                Err(net_error(4, "interface", ParseErrorKind::Missing)),
                Err(net_error(5, "rx_drop", ParseErrorKind::Missing)),
                Err(net_error(6, "rx_bytes", nan("ten"))),
                Err(net_error(7, "tx_bytes", nan("2e3"))),
                Ok(("eth3", 5, 6)),
            ],
        );
        check_net(
            b"h1\nh2\n\xff\xff: 1 0 0 0 0 0 0 0 2 0 0 0 0 0 0 0\neth0: \xff 0 0 0 0 0 0 0 2 0 0 0 0 0 0 0\n",
            &[
                Ok(("\u{fffd}\u{fffd}", 1, 2)),
                Err(net_error(4, "rx_bytes", nan("\u{fffd}"))),
            ],
        );
    }
}
