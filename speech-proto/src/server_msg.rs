//! What a speech server may send: the client-side check of every server frame.
//!
//! Role: the counterpart of [`crate::Validator`] for the other direction. A server may send
//! text frames that hold one `error` message (docs/speech-protocol.md §4.7) of at most
//! [`MAX_SERVER_MESSAGE`] bytes, Ping/Pong, and one Close with a valid status code
//! (RFC 6455 §7.4). Anything else is a [`ServerViolation`]: the server does not speak this
//! protocol (or is broken), and the client closes the connection with
//! [`ServerViolation::close_code`] instead of reading on.
//!
//! Inputs: the text of each text frame ([`check_server_text`]); the client's WebSocket library
//! classifies framing errors itself and maps them to [`ServerViolation::BadFrame`],
//! [`ServerViolation::TooLarge`] and [`ServerViolation::BadClose`].
//! Outputs: the parsed [`ErrorMsg`] or the violation. Pure and deterministic.

use serde_json::Value;

use crate::ErrorMsg;

/// Longest message (text payload) a server may send. An `error` message is a code and a
/// sentence; 16 KiB leaves room for long messages and bounds what a client buffers.
pub const MAX_SERVER_MESSAGE: usize = 16 * 1024;

/// A frame a speech server may not send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServerViolation {
    /// A binary frame: audio flows from client to server only (§2).
    BinaryFrame,
    /// A text frame that is not one JSON object with a string `type` naming a message of this
    /// protocol, or an `error` without its `code` and `message` strings.
    MalformedText,
    /// A well-formed message that only the client sends (`start`, `pause`, ...; in the other
    /// dialects, their client-only messages such as Twilio `start` or AudioHook `open`).
    UnexpectedMessage,
    /// A message or frame longer than [`MAX_SERVER_MESSAGE`].
    TooLarge,
    /// A Close frame with a reserved or invalid status code, a one-byte payload, or a reason
    /// that is not UTF-8 (RFC 6455 §5.5.1, §7.4).
    BadClose,
    /// Broken WebSocket framing: reserved bits set, a masked frame, an unknown opcode, a
    /// fragmented or oversized control frame, a stray continuation, text that is not UTF-8
    /// (RFC 6455 §5).
    BadFrame,
    /// A message whose sequence number is not the next one, or that acknowledges a client
    /// message never sent (AudioHook `seq` / `clientseq`).
    SequenceError,
    /// A message for another session or stream (AudioHook `id`, Twilio `streamSid`).
    WrongSession,
    /// A message the session's state does not allow (a second `opened`, a `pong` without a
    /// `ping`, a `closed` before `close`, anything before the session was announced).
    UnexpectedState,
    /// A known message with parameters the client cannot accept (AudioHook `opened` selecting
    /// media that was not offered, a `disconnect` without a valid reason).
    BadParameters,
}

impl ServerViolation {
    /// Every kind, in display order.
    pub const ALL: [ServerViolation; 10] = [
        ServerViolation::BinaryFrame,
        ServerViolation::MalformedText,
        ServerViolation::UnexpectedMessage,
        ServerViolation::TooLarge,
        ServerViolation::BadClose,
        ServerViolation::BadFrame,
        ServerViolation::SequenceError,
        ServerViolation::WrongSession,
        ServerViolation::UnexpectedState,
        ServerViolation::BadParameters,
    ];

    /// Stable name for counters, metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            ServerViolation::BinaryFrame => "binary_frame",
            ServerViolation::MalformedText => "malformed_text",
            ServerViolation::UnexpectedMessage => "unexpected_message",
            ServerViolation::TooLarge => "too_large",
            ServerViolation::BadClose => "bad_close",
            ServerViolation::BadFrame => "bad_frame",
            ServerViolation::SequenceError => "sequence_error",
            ServerViolation::WrongSession => "wrong_session",
            ServerViolation::UnexpectedState => "unexpected_state",
            ServerViolation::BadParameters => "bad_parameters",
        }
    }

    /// Status code of the Close the client sends (RFC 6455 §7.4.1): 1003 for data it cannot
    /// accept, 1009 for a message too big, 1002 (protocol error) otherwise.
    pub fn close_code(self) -> u16 {
        match self {
            ServerViolation::BinaryFrame => 1003,
            ServerViolation::TooLarge => 1009,
            _ => 1002,
        }
    }
}

impl std::fmt::Display for ServerViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServerViolation::BinaryFrame => "binary frame from the server",
            ServerViolation::MalformedText => "text frame that is not a protocol message",
            ServerViolation::UnexpectedMessage => "message type only a client may send",
            ServerViolation::TooLarge => "message too large",
            ServerViolation::BadClose => "invalid close frame",
            ServerViolation::BadFrame => "invalid WebSocket frame",
            ServerViolation::SequenceError => "message out of sequence",
            ServerViolation::WrongSession => "message for another session or stream",
            ServerViolation::UnexpectedState => "message not allowed in the session's state",
            ServerViolation::BadParameters => "message parameters the client cannot accept",
        })
    }
}

/// Message types of this protocol that only the client sends (§4.1–4.6).
const CLIENT_TYPES: [&str; 6] = ["start", "pause", "resume", "update", "stop", "dtmf"];

/// What a server's text frame said (§2 "What a server may send").
#[derive(Debug, Clone, PartialEq)]
pub enum ServerText {
    /// A rule violation it reports (§4.7).
    Error(ErrorMsg),
    /// Return audio (§16): a mark to report once played.
    Mark(crate::Mark),
    /// Return audio (§16): drop what is queued.
    Clear(crate::Clear),
}

/// Checks one text frame from a server: an `error` message (§4.7), or a `mark` or `clear` of
/// return audio (§16; whether its stream talks back is the caller's check). Unknown fields are
/// ignored (§4), as everywhere in this protocol.
pub fn check_server_text(text: &str) -> Result<ServerText, ServerViolation> {
    if text.len() > MAX_SERVER_MESSAGE {
        return Err(ServerViolation::TooLarge);
    }
    let value: Value = serde_json::from_str(text).map_err(|_| ServerViolation::MalformedText)?;
    let type_name = value
        .as_object()
        .and_then(|o| o.get("type"))
        .and_then(Value::as_str)
        .ok_or(ServerViolation::MalformedText)?;
    match type_name {
        "error" => serde_json::from_value(value)
            .map(ServerText::Error)
            .map_err(|_| ServerViolation::MalformedText),
        "mark" => {
            let m: crate::Mark =
                serde_json::from_value(value).map_err(|_| ServerViolation::MalformedText)?;
            if m.name.len() > crate::MAX_MARK_NAME {
                return Err(ServerViolation::BadParameters);
            }
            Ok(ServerText::Mark(m))
        }
        "clear" => serde_json::from_value(value)
            .map(ServerText::Clear)
            .map_err(|_| ServerViolation::MalformedText),
        t if CLIENT_TYPES.contains(&t) => Err(ServerViolation::UnexpectedMessage),
        _ => Err(ServerViolation::MalformedText),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_pass_with_or_without_stream_and_extra_fields() {
        let Ok(ServerText::Error(m)) = check_server_text(
            r#"{"type":"error","stream_id":42,"code":"audio_while_paused","message":"x","extra":1}"#,
        ) else {
            panic!("valid")
        };
        assert_eq!(
            (m.stream_id, m.code.as_str(), m.message.as_str()),
            (Some(42), "audio_while_paused", "x")
        );
        let Ok(ServerText::Error(m)) =
            check_server_text(r#"{"type":"error","code":"malformed_json","message":""}"#)
        else {
            panic!("valid")
        };
        assert_eq!(m.stream_id, None);
    }

    #[test]
    fn return_audio_marks_and_clears() {
        assert_eq!(
            check_server_text(r#"{"type":"mark","stream_id":7,"name":"m1"}"#),
            Ok(ServerText::Mark(crate::Mark {
                stream_id: 7,
                name: "m1".into()
            }))
        );
        assert_eq!(
            check_server_text(r#"{"type":"clear","stream_id":7}"#),
            Ok(ServerText::Clear(crate::Clear { stream_id: 7 }))
        );
        let long = format!(
            r#"{{"type":"mark","stream_id":7,"name":"{}"}}"#,
            "x".repeat(crate::MAX_MARK_NAME + 1)
        );
        assert_eq!(
            check_server_text(&long),
            Err(ServerViolation::BadParameters)
        );
        assert_eq!(
            check_server_text(r#"{"type":"clear"}"#),
            Err(ServerViolation::MalformedText)
        );
    }

    #[test]
    fn everything_else_is_a_violation() {
        use ServerViolation::*;
        let cases = [
            ("hello", MalformedText),
            ("", MalformedText),
            ("[1,2]", MalformedText),
            ("42", MalformedText),
            (r#"{"code":"x","message":"y"}"#, MalformedText),
            (r#"{"type":7}"#, MalformedText),
            (r#"{"type":"ack"}"#, MalformedText),
            (r#"{"type":"error","message":"no code"}"#, MalformedText),
            (
                r#"{"type":"error","code":5,"message":"code not a string"}"#,
                MalformedText,
            ),
            (
                r#"{"type":"error","stream_id":-1,"code":"x","message":"y"}"#,
                MalformedText,
            ),
            (
                r#"{"type":"stop","stream_id":1,"reason":"request"}"#,
                UnexpectedMessage,
            ),
            (r#"{"type":"start"}"#, UnexpectedMessage),
        ];
        for (text, want) in cases {
            assert_eq!(check_server_text(text).map(|_| ()), Err(want), "{text}");
        }
    }

    #[test]
    fn oversize_text_is_too_large_even_when_valid() {
        let pad = "x".repeat(MAX_SERVER_MESSAGE);
        let text = format!(r#"{{"type":"error","code":"c","message":"{pad}"}}"#);
        assert_eq!(
            check_server_text(&text).map(|_| ()),
            Err(ServerViolation::TooLarge)
        );
        let fits = format!(
            r#"{{"type":"error","code":"c","message":"{}"}}"#,
            "x".repeat(MAX_SERVER_MESSAGE - 40)
        );
        assert!(check_server_text(&fits).is_ok());
    }

    #[test]
    fn names_and_close_codes() {
        let names: Vec<&str> = ServerViolation::ALL.iter().map(|v| v.name()).collect();
        assert_eq!(
            names,
            [
                "binary_frame",
                "malformed_text",
                "unexpected_message",
                "too_large",
                "bad_close",
                "bad_frame",
                "sequence_error",
                "wrong_session",
                "unexpected_state",
                "bad_parameters"
            ]
        );
        assert_eq!(ServerViolation::SequenceError.close_code(), 1002);
        assert_eq!(ServerViolation::BinaryFrame.close_code(), 1003);
        assert_eq!(ServerViolation::TooLarge.close_code(), 1009);
        assert_eq!(ServerViolation::BadClose.close_code(), 1002);
        assert_eq!(
            ServerViolation::MalformedText.to_string(),
            "text frame that is not a protocol message"
        );
    }
}
