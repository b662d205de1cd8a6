/// Errors of the data channel, at this crate's boundary.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Control(#[from] handoff_core::Error),
    #[error("TLS: {0}")]
    Tls(rustls::Error),
    #[error("TLS certificate: {0}")]
    Certificate(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl DataError {
    /// An error the server sent back (the request was refused), as opposed to a broken path.
    pub fn is_remote_error(&self) -> bool {
        matches!(self, DataError::Control(handoff_core::Error::Remote { .. }))
    }

    pub fn code(&self) -> handoff_core::wire::ErrorCode {
        match self {
            DataError::Control(e) => e.code(),
            DataError::Tls(_) | DataError::Certificate(_) => {
                handoff_core::wire::ErrorCode::AuthFailed
            }
            DataError::Io(_) => handoff_core::wire::ErrorCode::Internal,
        }
    }
}

// Written out (not `#[from]`) so the detail shows once in a printed error chain.
impl From<rustls::Error> for DataError {
    fn from(e: rustls::Error) -> Self {
        DataError::Tls(e)
    }
}
