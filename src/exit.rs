//! How a command ended, and the one mapping from that to the process exit status.

/// How a command ended. Every command returns one; only [`Exit::code`] turns it into a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exit {
    /// Done (0).
    Success,
    /// The work failed, or a check did: said on stderr or stdout, as the protocol wants (1).
    Failure,
    /// Unusable arguments or settings, or (for `status`) no daemon to ask (2).
    Usage,
    /// `daemon --check` on an invalid configuration: systemd's `ExecCondition=` fails the
    /// start instead of skipping it (255).
    StartFails,
}

impl Exit {
    /// The process exit status.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failure => 1,
            Exit::Usage => 2,
            Exit::StartFails => 255,
        }
    }

    /// Success when `ok`, else failure.
    pub fn from_ok(ok: bool) -> Exit {
        if ok {
            Exit::Success
        } else {
            Exit::Failure
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_the_worst_of_several() {
        assert_eq!(Exit::Success.code(), 0);
        assert_eq!(Exit::Failure.code(), 1);
        assert_eq!(Exit::Usage.code(), 2);
        assert_eq!(Exit::StartFails.code(), 255);
        // Several parts of one command: the worst wins.
        assert_eq!(
            Exit::Success.max(Exit::Failure).max(Exit::Success),
            Exit::Failure
        );
        assert_eq!(Exit::Failure.max(Exit::Usage), Exit::Usage);
    }
}
