package wire

import (
	"encoding/binary"
	"fmt"
)

// Frontend message types the router looks at.
const (
	MsgQuery        = 'Q'
	MsgParse        = 'P'
	MsgBind         = 'B'
	MsgDescribe     = 'D'
	MsgExecute      = 'E'
	MsgClose        = 'C'
	MsgSync         = 'S'
	MsgFlush        = 'H'
	MsgTerminate    = 'X'
	MsgCopyData     = 'd'
	MsgCopyDone     = 'c'
	MsgCopyFail     = 'f'
	MsgFunctionCall = 'F'
	MsgPassword     = 'p'
)

// Backend message types the router looks at.
const (
	MsgParseComplete   = '1'
	MsgBindComplete    = '2'
	MsgCloseComplete   = '3'
	MsgCommandComplete = 'C'
	MsgDataRow         = 'D'
	MsgErrorResponse   = 'E'
	MsgCopyInResponse  = 'G'
	MsgCopyOutResponse = 'H'
	MsgCopyBothResp    = 'W'
	MsgEmptyQuery      = 'I'
	MsgNoData          = 'n'
	MsgNotice          = 'N'
	MsgNotification    = 'A'
	MsgParamDesc       = 't'
	MsgParamStatus     = 'S'
	MsgPortalSuspended = 's'
	MsgRowDescription  = 'T'
	MsgReadyForQuery   = 'Z'
	MsgAuth            = 'R'
	MsgBackendKeyData  = 'K'
)

// ParseQuery returns a Query message's SQL text.
func ParseQuery(body []byte) (string, error) {
	s, _, ok := cstring(body)
	if !ok {
		return "", fmt.Errorf("query: %w", ErrMalformed)
	}
	return s, nil
}

// QueryText returns a Query message's SQL text without copying it (the
// slice aliases body; Reader.String makes a string of it).
func QueryText(body []byte) ([]byte, error) {
	s, _, ok := cbytes(body)
	if !ok {
		return nil, fmt.Errorf("query: %w", ErrMalformed)
	}
	return s, nil
}

// ParseMsg is a decoded Parse message. Its slices alias the message body.
// Rest holds the parameter type count and OIDs exactly as sent.
type ParseMsg struct {
	Name, Query []byte
	Rest        []byte
}

// DecodeParse decodes a Parse message body without copying.
func DecodeParse(body []byte) (ParseMsg, error) {
	name, r, ok := cbytes(body)
	if !ok {
		return ParseMsg{}, fmt.Errorf("parse: %w", ErrMalformed)
	}
	q, r, ok := cbytes(r)
	if !ok || len(r) < 2 {
		return ParseMsg{}, fmt.Errorf("parse: %w", ErrMalformed)
	}
	if n := int(binary.BigEndian.Uint16(r)); len(r) != 2+4*n {
		return ParseMsg{}, fmt.Errorf("parse: parameter types: %w", ErrMalformed)
	}
	return ParseMsg{Name: name, Query: q, Rest: r}, nil
}

// AppendParse encodes a Parse body.
func AppendParse(dst []byte, name, query string, rest []byte) []byte {
	dst = append(dst, name...)
	dst = append(dst, 0)
	dst = append(dst, query...)
	dst = append(dst, 0)
	if len(rest) == 0 {
		return append(dst, 0, 0)
	}
	return append(dst, rest...)
}

// BindMsg is a decoded Bind message's header; its slices alias the body.
// Rest is everything after the statement name (formats, parameters, result
// formats), exactly as sent.
type BindMsg struct {
	Portal, Stmt []byte
	Rest         []byte
}

// DecodeBind decodes a Bind body's portal and statement names without copying.
func DecodeBind(body []byte) (BindMsg, error) {
	p, r, ok := cbytes(body)
	if !ok {
		return BindMsg{}, fmt.Errorf("bind: %w", ErrMalformed)
	}
	s, r, ok := cbytes(r)
	if !ok {
		return BindMsg{}, fmt.Errorf("bind: %w", ErrMalformed)
	}
	return BindMsg{Portal: p, Stmt: s, Rest: r}, nil
}

// BindParam returns parameter i (0-based) of a Bind's Rest and whether it is
// in text format. ok is false when i is out of range or the message is
// malformed; a NULL parameter returns nil, true.
func BindParam(rest []byte, i int) (val []byte, text bool, ok bool) {
	if len(rest) < 2 {
		return nil, false, false
	}
	nf := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) < 2*nf {
		return nil, false, false
	}
	text = true
	switch {
	case nf == 1:
		text = binary.BigEndian.Uint16(rest) == 0
	case nf > i:
		text = binary.BigEndian.Uint16(rest[2*i:]) == 0
	}
	rest = rest[2*nf:]
	if len(rest) < 2 {
		return nil, false, false
	}
	np := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if i >= np {
		return nil, false, false
	}
	for j := 0; j <= i; j++ {
		if len(rest) < 4 {
			return nil, false, false
		}
		n := int32(binary.BigEndian.Uint32(rest))
		rest = rest[4:]
		var v []byte
		if n >= 0 {
			if len(rest) < int(n) {
				return nil, false, false
			}
			v, rest = rest[:n], rest[n:]
		}
		if j == i {
			return v, text, true
		}
	}
	return nil, false, false
}

// BindResultFormat returns the format code a Bind asks for its first result
// column (0 text, 1 binary).
func BindResultFormat(rest []byte) int16 {
	if len(rest) < 2 {
		return 0
	}
	nf := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) < 2*nf+2 {
		return 0
	}
	rest = rest[2*nf:]
	np := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	for j := 0; j < np; j++ {
		if len(rest) < 4 {
			return 0
		}
		n := int32(binary.BigEndian.Uint32(rest))
		rest = rest[4:]
		if n > 0 {
			if len(rest) < int(n) {
				return 0
			}
			rest = rest[n:]
		}
	}
	if len(rest) < 4 || binary.BigEndian.Uint16(rest) == 0 {
		return 0
	}
	return int16(binary.BigEndian.Uint16(rest[2:]))
}

// AppendBind encodes a Bind body.
func AppendBind(dst []byte, portal []byte, stmt string, rest []byte) []byte {
	dst = append(dst, portal...)
	dst = append(dst, 0)
	dst = append(dst, stmt...)
	dst = append(dst, 0)
	return append(dst, rest...)
}

// DecodeTarget decodes a Describe or Close body: 'S' or 'P' and a name.
func DecodeTarget(body []byte) (kind byte, name string, err error) {
	if len(body) < 2 || (body[0] != 'S' && body[0] != 'P') {
		return 0, "", fmt.Errorf("describe/close: %w", ErrMalformed)
	}
	n, _, ok := cstring(body[1:])
	if !ok {
		return 0, "", fmt.Errorf("describe/close: %w", ErrMalformed)
	}
	return body[0], n, nil
}

// AppendTarget encodes a Describe or Close body.
func AppendTarget(dst []byte, kind byte, name string) []byte {
	dst = append(dst, kind)
	dst = append(dst, name...)
	return append(dst, 0)
}

// ErrorCode returns the SQLSTATE field of an ErrorResponse or NoticeResponse body.
func ErrorCode(body []byte) string {
	return errorField(body, 'C')
}

// ErrorMessage returns the message field of an ErrorResponse body.
func ErrorMessage(body []byte) string {
	return errorField(body, 'M')
}

// ErrorRoutine returns the routine field (R) of an ErrorResponse body: the
// server function that reported it.
func ErrorRoutine(body []byte) string {
	return errorField(body, 'R')
}

// ErrorSeverity returns the severity of an ErrorResponse body (the
// untranslated V field, else S): ERROR, FATAL or PANIC.
func ErrorSeverity(body []byte) string {
	if v := errorField(body, 'V'); v != "" {
		return v
	}
	return errorField(body, 'S')
}

func errorField(body []byte, f byte) string {
	for len(body) > 0 && body[0] != 0 {
		t := body[0]
		v, r, ok := cstring(body[1:])
		if !ok {
			return ""
		}
		if t == f {
			return v
		}
		body = r
	}
	return ""
}

// Frame appends a whole typed message (header and body) to dst.
func Frame(dst []byte, typ byte, body []byte) []byte {
	dst = append(dst, typ, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(dst[len(dst)-4:], uint32(len(body)+4))
	return append(dst, body...)
}

// begin starts a typed message in dst and returns the index of its length word.
func begin(dst []byte, typ byte) ([]byte, int) {
	dst = append(dst, typ, 0, 0, 0, 0)
	return dst, len(dst) - 4
}

func finish(dst []byte, at int) []byte {
	binary.BigEndian.PutUint32(dst[at:], uint32(len(dst)-at))
	return dst
}

func appendInt32(dst []byte, v int32) []byte {
	return binary.BigEndian.AppendUint32(dst, uint32(v))
}

// Error is an error to send to a client as an ErrorResponse.
type Error struct {
	Severity string // ERROR (default) or FATAL
	Code     string // SQLSTATE
	Message  string
	Detail   string
	Hint     string
	Position string // cursor position in the query text, characters from 1
	Routine  string // the server function reporting it (R), for an error the router answers as a server would
}

func (e *Error) Error() string { return e.Message + " (SQLSTATE " + e.Code + ")" }

// AppendError appends an ErrorResponse (or, with severity WARNING/NOTICE, a
// NoticeResponse) for e.
func AppendError(dst []byte, e *Error) []byte {
	sev := e.Severity
	if sev == "" {
		sev = "ERROR"
	}
	typ := byte(MsgErrorResponse)
	if sev == "WARNING" || sev == "NOTICE" || sev == "INFO" {
		typ = MsgNotice
	}
	dst, at := begin(dst, typ)
	field := func(t byte, v string) {
		if v == "" {
			return
		}
		dst = append(dst, t)
		dst = append(dst, v...)
		dst = append(dst, 0)
	}
	field('S', sev)
	field('V', sev)
	field('C', e.Code)
	field('M', e.Message)
	field('D', e.Detail)
	field('H', e.Hint)
	field('P', e.Position)
	field('R', e.Routine)
	dst = append(dst, 0)
	return finish(dst, at)
}

// AppendReadyForQuery appends ReadyForQuery with status 'I', 'T' or 'E'.
func AppendReadyForQuery(dst []byte, status byte) []byte {
	return append(dst, 'Z', 0, 0, 0, 5, status)
}

// AppendCommandComplete appends CommandComplete with tag.
func AppendCommandComplete(dst []byte, tag string) []byte {
	dst, at := begin(dst, MsgCommandComplete)
	dst = append(dst, tag...)
	dst = append(dst, 0)
	return finish(dst, at)
}

// AppendParameterStatus appends ParameterStatus.
func AppendParameterStatus(dst []byte, name, value string) []byte {
	dst, at := begin(dst, MsgParamStatus)
	dst = append(dst, name...)
	dst = append(dst, 0)
	dst = append(dst, value...)
	dst = append(dst, 0)
	return finish(dst, at)
}

// AppendNegotiateProtocolVersion appends NegotiateProtocolVersion: the newest
// minor version of protocol 3 spoken, and the protocol options (_pq_.*) not
// recognised.
func AppendNegotiateProtocolVersion(dst []byte, newestMinor int32, options []string) []byte {
	dst, at := begin(dst, 'v')
	dst = appendInt32(dst, newestMinor)
	dst = appendInt32(dst, int32(len(options)))
	for _, o := range options {
		dst = append(dst, o...)
		dst = append(dst, 0)
	}
	return finish(dst, at)
}

// AppendBackendKeyData appends BackendKeyData.
func AppendBackendKeyData(dst []byte, pid, secret uint32) []byte {
	dst, at := begin(dst, MsgBackendKeyData)
	dst = appendInt32(dst, int32(pid))
	dst = appendInt32(dst, int32(secret))
	return finish(dst, at)
}

// AppendAuth appends an Authentication message of the given code with data.
func AppendAuth(dst []byte, code int32, data []byte) []byte {
	dst, at := begin(dst, MsgAuth)
	dst = appendInt32(dst, code)
	dst = append(dst, data...)
	return finish(dst, at)
}

// AppendTextRowDescription appends a RowDescription of one text column.
func AppendTextRowDescription(dst []byte, column string) []byte {
	return AppendTextRowDescriptionFormat(dst, column, 0)
}

// AppendTextRowDescriptionFormat appends a RowDescription of one text
// column sent in format (0 text, 1 binary; the bytes are the same for text).
func AppendTextRowDescriptionFormat(dst []byte, column string, format int16) []byte {
	dst, at := begin(dst, MsgRowDescription)
	dst = append(dst, 0, 1)
	dst = append(dst, column...)
	dst = append(dst, 0)
	dst = appendInt32(dst, 0)     // table oid
	dst = append(dst, 0, 0)       // column
	dst = appendInt32(dst, 25)    // text
	dst = append(dst, 0xff, 0xff) // typlen -1
	dst = appendInt32(dst, -1)    // typmod
	dst = append(dst, byte(format>>8), byte(format))
	return finish(dst, at)
}

// AppendTextDataRow appends a DataRow with one text value.
func AppendTextDataRow(dst []byte, v string) []byte {
	dst, at := begin(dst, MsgDataRow)
	dst = append(dst, 0, 1)
	dst = appendInt32(dst, int32(len(v)))
	dst = append(dst, v...)
	return finish(dst, at)
}

// Simple complete messages.
var (
	ParseComplete = []byte{MsgParseComplete, 0, 0, 0, 4}
	CloseComplete = []byte{MsgCloseComplete, 0, 0, 0, 4}
	NoData        = []byte{MsgNoData, 0, 0, 0, 4}
	SyncMsg       = []byte{MsgSync, 0, 0, 0, 4}
	FlushMsg      = []byte{MsgFlush, 0, 0, 0, 4}
	TerminateMsg  = []byte{MsgTerminate, 0, 0, 0, 4}
)

// AppendQuery appends a Query message.
func AppendQuery(dst []byte, sql string) []byte {
	dst, at := begin(dst, MsgQuery)
	dst = append(dst, sql...)
	dst = append(dst, 0)
	return finish(dst, at)
}

// AppendCancelRequest appends a CancelRequest packet for pid and secret.
func AppendCancelRequest(dst []byte, pid uint32, secret []byte) []byte {
	dst = appendInt32(dst, int32(12+len(secret)))
	dst = appendInt32(dst, cancelCode)
	dst = appendInt32(dst, int32(pid))
	return append(dst, secret...)
}
