//! Access modes and SMB-style share modes, and the rule that decides whether two opens of one
//! file may coexist.

use std::fmt;
use std::str::FromStr;

/// What an open may do to the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    Read,
    ReadWrite,
}

impl Mode {
    pub fn can_write(self) -> bool {
        matches!(self, Mode::ReadWrite)
    }

    pub fn to_wire(self) -> u8 {
        match self {
            Mode::Read => 1,
            Mode::ReadWrite => 3,
        }
    }

    pub fn from_wire(v: u8) -> Option<Self> {
        match v {
            1 => Some(Mode::Read),
            3 => Some(Mode::ReadWrite),
            _ => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Read => "r",
            Mode::ReadWrite => "rw",
        })
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "r" | "ro" | "read" => Ok(Mode::Read),
            "rw" | "read-write" => Ok(Mode::ReadWrite),
            other => Err(format!("unknown mode {other:?}: expected r or rw")),
        }
    }
}

/// What this open lets *other* opens and clients do at the same time (SMB's share access):
/// read, write, and delete (remove or rename the file while it is open).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShareMode {
    pub read: bool,
    pub write: bool,
    /// Another client may unlink or rename the file while this open lasts (SMB's
    /// `FILE_SHARE_DELETE`). The open's own client may always.
    pub delete: bool,
}

impl ShareMode {
    /// The default: others may read and write, but not remove or rename the file.
    pub const ALL: ShareMode = ShareMode {
        read: true,
        write: true,
        delete: false,
    };
    /// Others may read, write, remove and rename (POSIX's behaviour, the mount's default).
    pub const POSIX: ShareMode = ShareMode {
        read: true,
        write: true,
        delete: true,
    };
    /// `--exclusive`: no other opener at all.
    pub const NONE: ShareMode = ShareMode {
        read: false,
        write: false,
        delete: false,
    };

    pub fn to_wire(self) -> u8 {
        u8::from(self.read) | (u8::from(self.write) << 1) | (u8::from(self.delete) << 2)
    }

    pub fn from_wire(v: u8) -> Option<Self> {
        (v <= 7).then_some(ShareMode {
            read: v & 1 != 0,
            write: v & 2 != 0,
            delete: v & 4 != 0,
        })
    }

    /// SMB's rule: each open's access must be allowed by the other's share mode.
    pub fn compatible(a: (Mode, ShareMode), b: (Mode, ShareMode)) -> bool {
        fn allows(access: Mode, share: ShareMode) -> bool {
            share.read && (!access.can_write() || share.write)
        }
        allows(a.0, b.1) && allows(b.0, a.1)
    }
}

impl fmt::Display for ShareMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == ShareMode::NONE {
            return f.write_str("none");
        }
        for (on, letter) in [(self.read, "r"), (self.write, "w"), (self.delete, "d")] {
            if on {
                f.write_str(letter)?;
            }
        }
        Ok(())
    }
}

impl FromStr for ShareMode {
    type Err = String;
    /// `none`, or letters from `r` (read), `w` (write) and `d` (delete: remove or rename),
    /// each at most once, in any order: `rw`, `rwd`, `r`, `d`, …
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "unknown share mode {s:?}: expected none, or letters of r (read), w (write) \
                 and d (delete), such as rw or rwd"
            )
        };
        if s == "none" {
            return Ok(ShareMode::NONE);
        }
        let mut share = ShareMode::NONE;
        for c in s.chars() {
            let bit = match c {
                'r' => &mut share.read,
                'w' => &mut share.write,
                'd' => &mut share.delete,
                _ => return Err(bad()),
            };
            if *bit {
                return Err(bad());
            }
            *bit = true;
        }
        if s.is_empty() {
            return Err(bad());
        }
        Ok(share)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smb_share_rules() {
        let r_all = (Mode::Read, ShareMode::ALL);
        let rw_all = (Mode::ReadWrite, ShareMode::ALL);
        let r_excl = (Mode::Read, ShareMode::NONE);
        let rw_share_r = (Mode::ReadWrite, "r".parse().unwrap());
        assert!(ShareMode::compatible(r_all, rw_all));
        assert!(!ShareMode::compatible(r_excl, r_all));
        assert!(!ShareMode::compatible(r_all, r_excl));
        // A writer that shares only reading admits readers but not a second writer.
        assert!(ShareMode::compatible(rw_share_r, r_all));
        assert!(!ShareMode::compatible(rw_share_r, rw_all));
        // A reader that denies writing keeps writers out.
        assert!(!ShareMode::compatible(
            (Mode::Read, "r".parse().unwrap()),
            rw_all
        ));
        // Sharing delete changes nothing between two opens: it is about removing the file.
        assert!(ShareMode::compatible(
            (Mode::Read, ShareMode::ALL),
            (Mode::ReadWrite, ShareMode::POSIX)
        ));
        assert!(!ShareMode::compatible(
            (Mode::Read, "rd".parse().unwrap()),
            (Mode::ReadWrite, ShareMode::POSIX)
        ));
    }

    #[test]
    fn share_modes_parse_print_and_travel() {
        for s in ["none", "r", "w", "d", "rw", "rd", "wd", "rwd"] {
            let m: ShareMode = s.parse().unwrap();
            assert_eq!(m.to_string(), s);
            assert_eq!(ShareMode::from_wire(m.to_wire()), Some(m));
        }
        assert_eq!("dwr".parse::<ShareMode>().unwrap(), ShareMode::POSIX);
        for bad in ["", "rr", "x", "rwx", "all"] {
            assert!(bad.parse::<ShareMode>().is_err(), "{bad}");
        }
        assert_eq!(ShareMode::from_wire(8), None);
    }
}
