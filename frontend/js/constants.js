// The protocol's constants, the same names and values as the server's
// omiro_trio/codes.py (a unit test holds the two equal). Use these, never
// bare numbers or strings, for close codes and `error` codes.

/** WebSocket close codes the server sends (RFC 6455 and Omiro's 4xxx). */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  INVALID_DATA: 1007,
  POLICY: 1008,
  TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  RESTARTING: 1012,
  PROTOCOL_ERRORS: 4000,
  SLOW_CONSUMER: 4008,
  RATE_LIMITED: 4029,
});

/** The `code` of an `error` op. */
export const ErrorCode = Object.freeze({
  BAD_JSON: "bad_json",
  BAD_REQUEST: "bad_request",
  UNKNOWN_OP: "unknown_op",
  NOT_MATCHED: "not_matched",
  MESSAGE_TOO_LONG: "message_too_long",
  RATE_LIMITED: "rate_limited",
  BANNED: "banned",
  UNAVAILABLE: "unavailable",
  BAD_TICKET: "bad_ticket",
  TICKET_EXPIRED: "ticket_expired",
  TICKET_USED: "ticket_used",
  MATCH_OVER: "match_over",
});
