// Package wire owns the client-facing side of the PostgreSQL wire protocol as
// pgtenant's router needs it: a framing reader that bounds message sizes,
// never allocates for small messages and takes large bodies from a Budget
// shared by all clients, startup/SSL/GSSENC/cancel packet parsing,
// server-side SCRAM-SHA-256(-PLUS, with tls-server-end-point channel binding)
// and md5 authentication, decoders for the few
// frontend and backend messages the router inspects, and encoders for the
// messages it writes itself (ErrorResponse with a SQLSTATE, ReadyForQuery,
// CommandComplete, ...).
//
// Messages are relayed as raw frames: the router decodes only what it must
// and copies the rest byte for byte.
package wire
