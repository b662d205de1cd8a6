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

/// What this open lets *other* opens do at the same time (SMB's share access).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShareMode {
    pub read: bool,
    pub write: bool,
}

impl ShareMode {
    /// The default: others may read and write.
    pub const ALL: ShareMode = ShareMode {
        read: true,
        write: true,
    };
    /// `--exclusive`: no other opener at all.
    pub const NONE: ShareMode = ShareMode {
        read: false,
        write: false,
    };

    pub fn to_wire(self) -> u8 {
        u8::from(self.read) | (u8::from(self.write) << 1)
    }

    pub fn from_wire(v: u8) -> Option<Self> {
        (v <= 3).then_some(ShareMode {
            read: v & 1 != 0,
            write: v & 2 != 0,
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
        f.write_str(match (self.read, self.write) {
            (true, true) => "rw",
            (true, false) => "r",
            (false, true) => "w",
            (false, false) => "none",
        })
    }
}

impl FromStr for ShareMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rw" => Ok(ShareMode::ALL),
            "r" => Ok(ShareMode {
                read: true,
                write: false,
            }),
            "w" => Ok(ShareMode {
                read: false,
                write: true,
            }),
            "none" => Ok(ShareMode::NONE),
            other => Err(format!(
                "unknown share mode {other:?}: expected rw, r, w or none"
            )),
        }
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
        let rw_share_r = (
            Mode::ReadWrite,
            ShareMode {
                read: true,
                write: false,
            },
        );
        assert!(ShareMode::compatible(r_all, rw_all));
        assert!(!ShareMode::compatible(r_excl, r_all));
        assert!(!ShareMode::compatible(r_all, r_excl));
        // A writer that shares only reading admits readers but not a second writer.
        assert!(ShareMode::compatible(rw_share_r, r_all));
        assert!(!ShareMode::compatible(rw_share_r, rw_all));
        // A reader that denies writing keeps writers out.
        assert!(!ShareMode::compatible(
            (
                Mode::Read,
                ShareMode {
                    read: true,
                    write: false
                }
            ),
            rw_all
        ));
    }
}
