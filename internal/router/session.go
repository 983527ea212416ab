package router

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/placement"
	"github.com/pgtenant/pgtenant/internal/pool"
	"github.com/pgtenant/pgtenant/internal/wire"
)

// stmtDef is a statement a client prepared with Parse.
type stmtDef struct {
	query  string // the text prepared on backends
	orig   string // the text the client sent
	types  []byte // parameter type count and OIDs as sent
	server string // backend name ("" for the unnamed statement), without the schema tag
	// clientName: server is the client's own name, used as is on the
	// backend (session pool mode; see onParse).
	clientName bool
	// tag and tagged cache the last server name with a schema tag (see
	// session.serverStmt).
	tag, tagged string
	info        stmtInfo
	// guard is what guard found in query (nil: nothing).
	guard *guardFinding
	// noShard caches session.noShard for the statement: 0 not asked yet,
	// 1 it runs without a tenant, 2 it needs one (noShardErr says why).
	noShard    uint8
	noShardErr *wire.Error
	// shape hashes the result and parameter shape a Describe of the
	// statement told the client (0: never described); pending is a hash
	// being made; stale: prepared afresh on a backend, the statement had
	// another shape (see stale.go).
	shape, pending uint64
	stale          bool
	// params is the last ParameterDescription the client was sent for
	// the statement, sent again before a Describe's 0A000 (see stale.go);
	// gen is Server.stmtGen at its Parse.
	params []byte
	gen    uint64
	// parses counts the client's Parses of the unnamed statement that def
	// stands for (recentUnnamed reuses def): a backend's unnamed statement
	// made for an earlier one was analysed before it (pool.Conn.UnnamedParse).
	parses uint64
}

// setting is one session setting the client made.
type setting struct {
	name, stmt string
	// reset marks a RESET of name ("all": RESET ALL) waiting in txnSets.
	reset bool
	// sp marks a savepoint statement, name the savepoint's (savepoint.go).
	sp uint8
}

// expect is one response the session waits for from the backend (or
// produces itself), in order.
type expect struct {
	kind    uint8
	swallow bool   // do not relay the response (router-injected message)
	name    string // backend statement name of an injected Parse
	synth   []byte // for eSynth: the message to send
	setup   bool   // part of a setup sent with writeSetup
	abort   bool   // a Parse meant to fail: its error is not the client's
	undo    uint8  // undoUnnamed, undoClose: see prev
	// unnamedBind: the client's Bind of the unnamed portal sent over the
	// router's own (ownUnnamed): should the server refuse or skip it, the
	// router's portal is still there (see onBind).
	unnamedBind bool
	// set is the client's session SET this response is for: recorded, to
	// be replayed on other backends, when it completes without error.
	set *setting
	// msets are the session SETs of a query string of several statements
	// (see stringSets): each recorded as its statement completes.
	msets *stringSets
	// stmt is the client's statement (named stmtName, "" for the unnamed
	// one) whose Parse this answers: forgotten should the server skip or
	// refuse the Parse (see dropParsed); for a client's Bind (stmtName
	// empty), the statement bound.
	stmt     *stmtDef
	stmtName string
	// undo says what of the client's statements this Parse or Close S
	// changed in the router's bookkeeping, undone should the server skip
	// it after an earlier error of the pipeline (see undoSkipped): for a
	// Parse of the unnamed statement (undoUnnamed) prev is the client's
	// unnamed statement before it and stmt the new one; for a Close S
	// (undoClose) stmt is the statement closed (nil for none) and prev,
	// of the unnamed one, the statement before.
	prev *stmtDef
	// copyDone: the client sent CopyDone or CopyFail for this Query or
	// Execute ahead of the server's CopyInResponse (see markCopyDone).
	copyDone bool
	// inCopy: an eSync sent after an Execute and before the client's
	// CopyDone or CopyFail for it; ignored by the server should that
	// Execute start COPY FROM STDIN (see dropCopySyncs).
	inCopy bool
	// reset: the DISCARD ALL that resets a session-mode backend for the
	// next client (session.end); its error sets session.resetFailed.
	reset bool
	// prep are the statement names this Query or Execute prepares with SQL
	// PREPARE, in order: each CommandComplete PREPARE records the first in
	// session.sqlStmts.
	prep []string
	// skip counts the router's own statements at the start of this
	// Query's text whose answers are not relayed; posShift is the length
	// of that prefix in characters (see combined.go).
	skip     uint8
	posShift int
	// unlisten: this Query or Execute is UNLISTEN * alone; its
	// CommandComplete stops the listening once its transaction commits
	// (see noteUnlisten).
	unlisten bool
}

const (
	eParse uint8 = iota + 1
	eBind
	eDescS
	eDescP
	eExec
	eClose
	eSync  // ends with ReadyForQuery
	eQuery // ends with ReadyForQuery
	eSynth
	eSynthRFQ
)

// expect.undo: what a skipped Parse or Close S leaves undone.
const (
	undoUnnamed       uint8 = iota + 1 // a Parse of the unnamed statement
	undoClose                          // a Close S of stmtName
	undoBeginPortal                    // a Close P "" or Bind "" that cleared session.beginPortal
	undoNoBeginPortal                  // a Bind "" that set it
)

// session is one client connection.
type session struct {
	srv    *Server
	nc     net.Conn
	cr     *wire.Reader // nil while parked (see unparkIO)
	cw     *bufio.Writer
	cwTo   io.Writer // what cw writes to (see putWriter); nil while parked
	ctx    context.Context
	out    []byte
	pid    uint32
	secret uint32
	id     uint64

	user    string
	access  UserAccess // see Config.Access
	remote  string
	started time.Time
	// minor is the minor protocol version the client asked for (see
	// negotiateProtocol).
	minor uint16
	// tls: the client connection is encrypted; cbind is its
	// tls-server-end-point channel binding data (nil: SCRAM-SHA-256-PLUS
	// is not offered).
	tls   bool
	cbind []byte

	startTenant string
	tenant      string // session tenant (SET pgtenant.tenant)
	localTenant string // SET LOCAL pgtenant.tenant, this transaction
	view        atomic.Pointer[string]
	sets        []setting
	sig         string
	// setsPath: sets holds the client's own search_path (session pool
	// mode; see ownsPath). pathNext is what the statements sent since the
	// backend was last idle did to it: 1 set it, -1 reset it (the router's
	// shard path again), 0 nothing.
	setsPath bool
	pathNext int8
	// acquiring: a wait for a pool backend is under way (see acqMu).
	acquiring bool
	// localMap and localShard: setTenant found localTenant in shard
	// localShard of the map localMap, so that the transaction's checkout
	// (locateLocal) does not look the tenant up again in that map.
	localMap *placement.Map

	stmts   map[string]*stmtDef
	unnamed *stmtDef
	// synthBase is the space for queued messages the router answers
	// itself (see pushSynth), synthFree what is free of it.
	synthBase, synthFree []byte
	// recent are the last few distinct unnamed statements (see
	// recentUnnamed), the most recent first.
	recent [8]*stmtDef

	be    *pool.Conn
	beCur atomic.Pointer[pool.Conn]
	// cancelMu is held while a cancel request is sent to beCur (see
	// cancelQuery, detachCancel, releaseBackend).
	cancelMu sync.Mutex
	// cancelLost is the backend of a cancel request whose fate is unknown
	// (its server did not confirm it): closed rather than reused when it is
	// released. Guarded by cancelMu.
	cancelLost *pool.Conn

	beTenant string
	beGate   *gate
	beStart  time.Time
	entry    inflight // this session's entry in its gate (one at a time)
	// nodes caches the pools and metrics of the nodes of the session's
	// last backends (see session.poolFor), next the entry to replace.
	nodes     [2]nodeEntry
	nodesNext int
	cancelCh  chan struct{}
	// acq is the context of the session's waits for a pool backend, which
	// a cancel request ends (acquireCtx); under acqMu.
	acqMu   sync.Mutex
	acq     context.Context
	acqStop context.CancelFunc
	// portalSet is the session SET bound to portal portalSetName, until
	// its Execute or the next Sync; portalPrep likewise the names of the
	// SQL PREPARE bound to portal portalPrepName.
	portalSet      *setting
	portalSetName  string
	portalPrep     []string
	portalPrepName string
	// sqlStmts are the names the client prepared with SQL PREPARE on its
	// backend (session mode): one namespace with its protocol-level
	// statements there, so that a Parse of one of them is 42P05 as on a
	// direct connection. Forgotten with the backend (another node's gets
	// DISCARD ALL).
	sqlStmts map[string]struct{}
	// txnSets are session SETs run in the transaction in progress on the
	// backend (setDone), recorded when it commits.
	txnSets []setting
	// unsynced: extended-protocol messages went to the backend since the
	// last Sync (or Query), so the server holds an implicit transaction
	// open for them.
	unsynced bool
	status   byte // transaction status from the last ReadyForQuery
	// relayed is set when server messages were buffered for the client
	// since the last flush.
	relayed bool
	failed  bool // emulated aborted transaction (its backend was lost)
	// localShard: see localMap.
	localShard int32

	pendingBegin string // deferred BEGIN (and SET LOCALs) not yet sent
	synthTag     string // CommandComplete tag for the portal synthName
	synthName    string
	synthValue   string
	synthFormat  int16
	synthRow     bool // the synthesized portal returns one text row
	skipToSync   bool
	// beginPortal: the client's unnamed portal is a transaction start's
	// (BEGIN by Bind "") or a ROLLBACK TO's, perhaps answered by the router
	// or on no backend now; it has no row description, and Describe P "" gets NoData in its
	// block, aborted or not, as from a server (onDescribe).
	beginPortal bool
	// closing: the backend sent a FATAL error, relayed; the session ends.
	closing bool
	// dropBackend: the attached backend lost the router's prepared
	// statements behind its back (stmtsDropped); it is closed when released.
	dropBackend bool
	// boundDeferred: a portal went to the server while BEGIN was deferred
	// (a catalog read without a tenant), so a portal name there may be
	// the client's.
	boundDeferred bool
	// held is a backend message (type byte, then body) that copyIn read
	// and drain handles next; copyDiscard drops the client's COPY data up
	// to its CopyDone or CopyFail, the server having ended the COPY.
	held        []byte
	copyDiscard bool
	// resetFailed: the DISCARD ALL of session.end failed; the backend is
	// closed rather than handed to another client with this one's state.
	resetFailed bool
	// clientErr: the client's connection failed while the router relayed
	// to it or read its COPY data (see clientFailed); the session ends.
	clientErr error
	// copyStreaming: the client is sending COPY data ahead of the server's
	// CopyInResponse.
	copyStreaming bool
	listening     bool
	// unlistenDone: the server completed UNLISTEN * or DISCARD ALL in the
	// transaction still open, no error or rollback since (see
	// noteUnlisten); unlistenPortal names the portal bound to UNLISTEN *
	// (unlistenBound) until its Execute or the next Sync.
	unlistenDone, unlistenBound bool
	unlistenPortal              string
	// idle is the session's state in the server's idle watch (armIdle;
	// nil before the first arm).
	idle *idleArm
	// pk is the session's state in parking (park_linux.go); parkDl and
	// parkArmed are loop's read deadline when it parked, parkBack tells
	// loop it goes on after a park. unarmed: copyIn cleared the client's
	// read deadline, which loop's lazy deadline (waitEnd) must then set
	// again. copyRefuse: localError awaits the server's answers to the
	// client's earlier messages, the client's next (refused) one already
	// read: a COPY FROM STDIN they start is failed at once (copyIn), as a
	// server fails a COPY given another message, not waited on (with no
	// read deadline) for data the client will not send.
	pk                                       parkState
	parkDl                                   time.Time
	parkArmed, parkBack, unarmed, copyRefuse bool
	// midString: the statement being answered is followed by more of the
	// same query string (see onQueryParts): no ReadyForQuery yet.
	midString bool
	// shardUsed: a statement was routed to a tenant's shard since the last
	// ReadyForQuery outside a transaction (see resetTenantAfterTxn).
	shardUsed bool

	// cleanDue: the attached backend came from the pool in transaction
	// mode and may hold another client's temporary objects; DISCARD TEMP
	// goes before this client's first statement on it (see isolation.go).
	cleanDue bool
	// pre is the prefix of a combined Query (see combined.go).
	pre []byte
	// errBuf holds an ErrorResponse body whose position was moved.
	errBuf []byte
	// setupDue: the attached backend still needs setupPath (a quoted
	// identifier; "" when its search_path is right already) and
	// setupTenant, sent by writeSetup or flushSetup.
	setupDue    bool
	setupPath   string
	setupSchema string
	setupTenant string
	// setupLocal: the due setup is for this transaction only (transaction
	// mode; see deferSetup).
	setupLocal bool
	// setupEach: a statement was bound (or queried) that may end the
	// transaction, or undo or reset the settings, part way through a
	// pipeline; every statement after it, until the backend is idle, gets
	// the settings first unless the backend's session values are right
	// (see noteEnding).
	setupEach bool
	// txnEndBound: a statement that ends the transaction was bound or
	// queried; the statements after it are not in that transaction, so
	// its tenant no longer applies (see pickTenant).
	txnEndBound bool
	// abortLeft: a ROLLBACK TO was bound since the last ReadyForQuery; the
	// statements after it do not run in an aborted transaction.
	abortLeft bool
	// abortLeftAt is syncsPushed when abortLeft was set: the ReadyForQuery
	// of a later Sync tells the transaction's real status.
	abortLeftAt uint64
	// pipeMarkAt is syncsPushed when setupEach or txnEndBound was last set.
	pipeMarkAt uint64
	// syncsPushed and syncsPopped count the Sync/Query items queued and
	// answered so far.
	syncsPushed, syncsPopped uint64
	// clientPortal: the client bound the unnamed portal on the attached
	// backend since its transaction began; the router's own statements
	// then use a portal of their own (see bindPrepared).
	clientPortal bool
	// ownUnnamed: the server's unnamed portal may be the router's own, left
	// by bindPrepared inside a transaction block (where it outlives Sync);
	// the client's Execute or Describe of portal "" then sends Close P ""
	// first, so the server answers 34000 as it would without the router.
	ownUnnamed bool
	// unnamedDoubt: the client bound the unnamed portal over the router's
	// own and the answer is not yet in: the client's Sync waits for it
	// (a refused Bind leaves the router's portal; see drain).
	unnamedDoubt bool
	// setupOpen: a setup sent by writeSetup awaits its ReadyForQuery; no
	// further client message is handled until it arrives.
	setupOpen bool
	// localSetup: sendPendingBegin sets wantSchema and wantTenant for the
	// transaction it opens.
	localSetup bool
	// localOpen: a transaction opened with transaction-local settings
	// awaits its end; each Query and Sync is answered before the next
	// client message is handled, so nothing runs on the backend after the
	// settings revert.
	localOpen bool
	// wantSchema and wantTenant are what the attached backend is set up for.
	wantSchema, wantTenant string
	// wantTag is wantSchema's tag in backend statement names.
	wantTag string

	queue []expect // pending responses, in order
	qbuf  []expect // queue's backing array, reused once the queue empties
	syncs int      // eSync/eQuery/eSynthRFQ items in queue
	// use counts the work on the attached backend for the usage sketch.
	use usageAcc
}

var errShutdown = errors.New("router shutting down")

// serveConn runs one client connection from its first byte to its end. It
// reports whether the session parked (park_linux.go): its end is then the
// work of the goroutine that resumes it.
//
// Its frame and run's stay small: they are on the stack of every idle
// client's goroutine that is not parked, below loop and its read, while the
// startup's locals (1.1 KiB) live in openSession's frame, returned by then.
func (s *Server) serveConn(ctx context.Context, nc net.Conn) bool {
	ss := s.openSession(ctx, nc)
	if ss == nil {
		return false
	}
	ss.takeWriter()
	ss.logStart()
	if ss.run() {
		return true
	}
	ss.finish(nc)
	return false
}

// errParked ends loop when the session parks (see park_linux.go).
var errParked = errors.New("client parked")

// run relays the session's messages until it ends, then gives back its
// backend (false), or until it parks (true: the caller returns at once).
func (ss *session) run() bool {
	for {
		err := ss.loop()
		if err == errParked {
			if ss.park(ss.parkDl) {
				return true
			}
			ss.parkBack = true // could not park: go on waiting
			continue
		}
		ss.end()
		ss.logEnd(err)
		return false
	}
}

// resume goes on with a parked session, in a goroutine of its own (unpark),
// to its end or its next park.
func (ss *session) resume() {
	ss.parkBack = true
	ss.unparkIO()
	if ss.run() {
		return
	}
	ss.finish(nil)
	ss.srv.wg.Done() // Serve's count of the connection (see Serve)
}

// finish closes the ended session's connection (and raw, the socket
// under it) and unregisters it.
func (ss *session) finish(raw net.Conn) {
	ss.unwatchClient()
	ss.srv.m.ClientConns.Dec()
	ss.srv.unregister(ss)
	ss.nc.Close() // nc, or the TLS connection over it (closing nc too)
	if raw != nil && raw != ss.nc {
		raw.Close()
	}
}

//go:noinline
func (ss *session) logStart() {
	ss.srv.log.Info("session start", "session", ss.id, "user", ss.user, "remote", ss.remote, "tenant", ss.tenant, "tls", ss.tls)
}

//go:noinline
func (ss *session) logEnd(err error) {
	ss.srv.log.Info("session end", "session", ss.id, "user", ss.user, "duration", time.Since(ss.started).Round(time.Millisecond), "err", err)
}

// openSession reads the client's startup packet (answering SSL and GSSAPI
// encryption requests and cancel requests on the way), registers the
// session and authenticates the client. It returns nil, the connection
// closed, when the client goes no further; otherwise the session, counted
// in ClientConns and registered, whose client write buffer is taken by
// serve (a connection storm allocates none for clients refused or gone).
//
//go:noinline
func (s *Server) openSession(ctx context.Context, nc net.Conn) (sess *session) {
	raw := nc
	var tc *tls.Conn
	defer func() {
		if sess == nil {
			if tc != nil {
				tc.Close()
			}
			raw.Close()
		}
	}()
	s.m.ClientTotal.Inc()
	nc.SetDeadline(time.Now().Add(s.cfg.StartupTimeout))
	rio := wire.RawIO(nc)
	cr := s.clientReader(ctx, rio)
	var st wire.Startup
	var tlsOn bool
	var cbind func() []byte
	if s.cfg.TLS != nil {
		if direct, err := startsTLS(nc); err != nil {
			return nil
		} else if direct {
			if tc, cbind, err = s.directTLS(ctx, nc); err != nil {
				s.log.Debug("direct tls handshake", "err", err)
				return nil
			}
			nc, rio, tlsOn = tc, tc, true
			cr = s.clientReader(ctx, nc)
		}
	}
	for {
		b, err := cr.ReadStartup()
		if err != nil {
			// A client that goes away before its startup packet is complete
			// gets no reply, as from PostgreSQL and pgbouncer, and so does
			// one whose packet has an impossible length: PostgreSQL only
			// logs "invalid length of startup packet". node-postgres's
			// connect-then-end sends a Terminate first, and raised an
			// answer as an unhandled error.
			if errors.Is(err, wire.ErrMalformed) {
				s.m.ClientRefused.WithLabelValues("startup").Inc()
				s.log.Debug("invalid startup packet", "err", err)
			}
			return
		}
		st, err = wire.ParseStartup(b)
		if err != nil {
			s.m.ClientRefused.WithLabelValues("startup").Inc()
			writeFatal(nc, "08P01", fmt.Sprintf("invalid startup packet: %v", err))
			return
		}
		switch st.Kind {
		case wire.KindSSLRequest:
			if tlsOn {
				// As PostgreSQL: not TLS inside TLS.
				s.m.ClientRefused.WithLabelValues("startup").Inc()
				writeFatal(nc, "0A000", "unsupported frontend protocol 1234.5679: server supports 3.0 to 3.0")
				return
			}
			if s.cfg.TLS == nil {
				nc.Write([]byte{'N'})
				continue
			}
			nc.Write([]byte{'S'})
			tcfg, cb := s.tlsConfig()
			tc = tls.Server(nc, tcfg)
			if err := tc.HandshakeContext(ctx); err != nil {
				s.log.Debug("tls handshake", "err", err)
				return nil
			}
			nc = tc
			rio = tc
			tlsOn, cbind = true, cb
			cr = s.clientReader(ctx, nc)
			continue
		case wire.KindGSSENCRequest:
			nc.Write([]byte{'N'})
			continue
		case wire.KindCancel:
			s.cancel(st.PID, st.Secret)
			return
		}
		break
	}
	ss := &session{
		srv:      s,
		nc:       nc,
		cr:       cr,
		cwTo:     rio,
		ctx:      ctx,
		user:     st.Params["user"],
		remote:   nc.RemoteAddr().String(),
		started:  time.Now(),
		stmts:    make(map[string]*stmtDef),
		status:   'I',
		id:       s.nextID.Add(1),
		cancelCh: make(chan struct{}, 1),
		tls:      tlsOn,
		minor:    st.Minor,
	}
	if cbind != nil {
		ss.cbind = cbind()
	}
	if !s.register(ss) {
		s.m.ClientRefused.WithLabelValues("max_clients").Inc()
		writeFatal(nc, "53300", "sorry, too many clients already")
		return nil
	}
	if s.closed.Load() {
		s.unregister(ss)
		return nil
	}
	s.m.ClientConns.Inc()
	if err := ss.startup(st.Params); err != nil {
		s.m.ClientConns.Dec()
		s.unregister(ss)
		reason := "auth"
		if errors.Is(err, errTLSRequired) {
			reason = "tls"
		}
		s.m.ClientRefused.WithLabelValues(reason).Inc()
		s.log.Info("client refused", "session", ss.id, "user", ss.user, "remote", ss.remote, "err", err)
		return nil
	}
	nc.SetDeadline(time.Time{})
	cr.SetMax(s.cfg.MaxMessage)
	return ss
}

// maxAuthMessage bounds client messages before authentication ends
// (PostgreSQL's PG_MAX_AUTH_TOKEN_LENGTH).
const maxAuthMessage = 65535

// clientReader returns a reader for a client connection: messages up to
// maxAuthMessage until the client has authenticated (then Config.MaxMessage),
// large ones counted in the server's budget.
func (s *Server) clientReader(ctx context.Context, r io.Reader) *wire.Reader {
	cr := wire.NewReader(r, 16<<10, maxAuthMessage)
	if s.budget != nil {
		cr.UseBudget(ctx, s.budget)
	}
	return cr
}

// writeFatal sends a FATAL ErrorResponse on a connection that is about to close.
func writeFatal(w io.Writer, code, msg string) {
	w.Write(wire.AppendError(nil, &wire.Error{Severity: "FATAL", Code: code, Message: msg}))
}

// negotiateProtocol answers a StartupMessage asking for a minor protocol
// version past 3.0 or for protocol options (_pq_.*) with
// NegotiateProtocolVersion, as PostgreSQL does: the router speaks 3.0 and
// no option. The options are taken out of params (they are no settings).
func (ss *session) negotiateProtocol(params map[string]string) error {
	var opts []string
	for k := range params {
		if strings.HasPrefix(k, "_pq_.") {
			opts = append(opts, k)
			delete(params, k)
		}
	}
	if ss.minor == 0 && len(opts) == 0 {
		return nil
	}
	sortStrings(opts)
	_, err := ss.nc.Write(wire.AppendNegotiateProtocolVersion(nil, 0, opts))
	return err
}

// startup authenticates the client and sends the startup responses.
func (ss *session) startup(params map[string]string) error {
	s := ss.srv
	ss.srv.log.Debug("startup params", "params", params)
	if r := params["replication"]; r != "" && !strings.EqualFold(r, "false") && !strings.EqualFold(r, "off") && !strings.EqualFold(r, "no") && r != "0" {
		ss.fatal("0A000", "replication connections are not supported by the router; connect to a node directly")
		return errors.New("replication connection refused")
	}
	if err := ss.negotiateProtocol(params); err != nil {
		return err
	}
	if !ss.tls && s.requiresTLS(ss.user) {
		werr := tlsRequiredError(ss.user)
		ss.nc.Write(wire.AppendError(nil, werr))
		return errTLSRequired
	}
	if err := ss.authenticate(); err != nil {
		return err
	}
	// StartupTimeout bounds what the client sends; the router's own work
	// from here (the first client learns the server parameters from a
	// backend) must not run out the client's time and lose its reply.
	ss.nc.SetDeadline(time.Time{})
	db := params["database"]
	if db == "" {
		db = ss.user
	}
	if want := s.cfg.Database; want != "" && db != want {
		ss.fatal("3D000", fmt.Sprintf("database %q does not exist", db))
		return fmt.Errorf("database %q refused", db)
	}
	// Tenant and session settings from the startup packet.
	opts := wire.OptionSettings(params["options"])
	for k, v := range params {
		switch k {
		case "user", "database", "options", "replication", "client_encoding":
			continue
		}
		if _, dup := opts[strings.ToLower(k)]; !dup {
			opts[strings.ToLower(k)] = v
		}
	}
	var ps []setting
	var ignored []string // startup settings the router owns
	var startPath string
	var hasStartPath bool
	if ce := params["client_encoding"]; ce != "" && !safeEncoding(ce) {
		e := encodingError(ce)
		ss.fatal(e.Code, e.Message)
		return fmt.Errorf("client_encoding %q refused", ce)
	}
	for k, v := range opts {
		if lexSetting(k) && !lexValueOK(k, v) {
			// Statements would reach the server read otherwise than the
			// router reads them (see lexsafe.go).
			ss.fatal("0A000", lexSettingError(k, v).Message)
			return fmt.Errorf("startup setting %s=%q refused", k, v)
		}
		if k == tenantSetting {
			if err := placement.ValidateTenantID(v); err != nil {
				ss.fatal("22023", fmt.Sprintf("invalid tenant id in startup parameter %s: %v", tenantSetting, err))
				return err
			}
			ss.startTenant, ss.tenant = v, v
			continue
		}
		if k == "search_path" {
			startPath, hasStartPath = v, true
			continue
		}
		if isReserved(k) {
			ignored = append(ignored, k)
			continue
		}
		ps = append(ps, setting{name: k, stmt: "SET " + pgx.Identifier{k}.Sanitize() + " TO " + quoteLiteral(v)})
	}
	if ce := params["client_encoding"]; ce != "" && !isUTF8(ce) {
		ps = append(ps, setting{name: "client_encoding", stmt: "SET client_encoding TO " + quoteLiteral(ce)})
	}
	if e := ss.startAccess(); e != nil {
		ss.fatal(e.Code, e.Message)
		return errors.New(e.Message)
	}
	if hasStartPath {
		if ss.mayOwnPath() {
			// The client's own search_path (session mode): set as the
			// server takes a startup value, a list.
			ps = append(ps, setting{name: "search_path", stmt: pathSetting(startPath)})
		} else {
			ignored = append(ignored, "search_path")
		}
	}
	sortSettings(ps)
	ss.sets = ps
	ss.resig()
	ss.setView()

	out := wire.AppendAuth(nil, wire.AuthOK, nil)
	sortStrings(ignored)
	for _, k := range ignored {
		// Said, not silently dropped: SHOW search_path would otherwise
		// surprise (the tenant's shard schema, or pg_catalog without one).
		out = wire.AppendError(out, ignoredStartupWarning(k))
	}
	sp := s.serverParams(ss.ctx)
	enc := params["client_encoding"]
	if enc == "" || isUTF8(enc) {
		enc = "UTF8"
	}
	for k, v := range sp {
		out = wire.AppendParameterStatus(out, k, v)
	}
	out = wire.AppendParameterStatus(out, "client_encoding", enc)
	out = wire.AppendParameterStatus(out, "application_name", opts["application_name"])
	out = wire.AppendParameterStatus(out, "is_superuser", "off")
	out = wire.AppendParameterStatus(out, "session_authorization", ss.user)
	if _, ok := sp["standard_conforming_strings"]; !ok {
		out = wire.AppendParameterStatus(out, "standard_conforming_strings", "on")
	}
	out = wire.AppendBackendKeyData(out, ss.pid, ss.secret)
	out = wire.AppendReadyForQuery(out, 'I')
	if _, err := ss.nc.Write(out); err != nil {
		return fmt.Errorf("write startup response: %w", err)
	}
	return nil
}

func isUTF8(enc string) bool {
	e := strings.ToLower(strings.ReplaceAll(enc, "-", ""))
	return e == "utf8" || e == "unicode"
}

func (ss *session) fatal(code, msg string) {
	writeFatal(ss.nc, code, msg)
}

func (ss *session) authenticate() error {
	s := ss.srv
	if s.cfg.Auth == AuthTrust {
		return nil
	}
	fail := func(err error) error {
		ss.fatal("28P01", fmt.Sprintf("password authentication failed for user %q", ss.user))
		return fmt.Errorf("authenticate %q: %w", ss.user, err)
	}
	failBinding := func(err error) error {
		if !errors.Is(err, wire.ErrChannelBinding) {
			return fail(err)
		}
		ss.fatal("28000", err.Error())
		return fmt.Errorf("authenticate %q: %w", ss.user, err)
	}
	password, ok := s.cfg.Users[ss.user]
	var cred Credential
	if !ok && s.cfg.Credentials != nil {
		cred, ok = s.cfg.Credentials(ss.user)
		if ok && cred.SCRAM == "" && cred.MD5 == "" {
			return fail(errors.New("the user has no stored password"))
		}
	}
	if !ok {
		return fail(errors.New("no such user"))
	}
	plain := cred.SCRAM == "" && cred.MD5 == ""
	readPassword := func() ([]byte, error) {
		typ, body, err := ss.cr.ReadMessage()
		if err != nil {
			return nil, err
		}
		if typ != wire.MsgPassword {
			return nil, fmt.Errorf("expected password message, got %q", typ)
		}
		return body, nil
	}
	method := s.cfg.Auth
	if method == AuthMD5 && !plain && cred.MD5 == "" {
		method = AuthSCRAM // only a SCRAM verifier is stored: PostgreSQL does the same
	}
	switch method {
	case AuthMD5:
		var salt [4]byte
		rand.Read(salt[:])
		if _, err := ss.nc.Write(wire.AppendAuth(nil, wire.AuthMD5, salt[:])); err != nil {
			return err
		}
		body, err := readPassword()
		if err != nil {
			return fail(err)
		}
		if plain {
			err = wire.CheckMD5(body, ss.user, password, salt)
		} else {
			err = wire.CheckMD5Hash(body, cred.MD5, salt)
		}
		if err != nil {
			return fail(err)
		}
		return nil
	case AuthSCRAM:
		var keys wire.SCRAMKeys
		var err error
		switch {
		case plain:
			keys, err = s.scramKeys(ss.user, password)
		case cred.SCRAM != "":
			keys, err = wire.ParseSCRAMVerifier(cred.SCRAM)
		default:
			err = errors.New("only an md5 hash is stored: SCRAM authentication is impossible")
		}
		if err != nil {
			return fail(err)
		}
		sc := wire.NewSCRAMServer(keys)
		if ss.cbind != nil {
			sc = wire.NewSCRAMServerTLS(keys, ss.cbind)
		}
		if _, err := ss.nc.Write(wire.AppendAuth(nil, wire.AuthSASL, sc.Mechanisms())); err != nil {
			return err
		}
		body, err := readPassword()
		if err != nil {
			return fail(err)
		}
		first, err := sc.First(body)
		if err != nil {
			return failBinding(err)
		}
		if _, err := ss.nc.Write(wire.AppendAuth(nil, wire.AuthSASLContinue, first)); err != nil {
			return err
		}
		body, err = readPassword()
		if err != nil {
			return fail(err)
		}
		final, err := sc.Final(body)
		if err != nil {
			return failBinding(err)
		}
		ss.srv.log.Debug("scram", "session", ss.id, "user", ss.user, "channel_binding", sc.ChannelBound())
		if _, err := ss.nc.Write(wire.AppendAuth(nil, wire.AuthSASLFinal, final)); err != nil {
			return err
		}
		return nil
	}
	return fail(fmt.Errorf("unknown auth method %q", s.cfg.Auth))
}

// kill closes the client and its backend from another goroutine.
func (ss *session) kill() {
	ss.nc.Close()
	ss.unpark() // a parked session then ends in a goroutine of its own
	if be := ss.beCur.Load(); be != nil {
		be.Kill(errShutdown)
	}
}

// cancelQuery cancels the backend query this session is running, if any.
func (ss *session) cancelQuery() {
	select {
	case ss.cancelCh <- struct{}{}: // ends a hold on a fenced shard
	default:
	}
	ss.acqMu.Lock()
	if ss.acquiring {
		ss.acqStop() // ends a wait for a pool backend (57014)
	}
	ss.acqMu.Unlock()
	// Held until the server has the request (it closes the connection
	// then): detachCancel waits for it, so the backend is not given to
	// another client, or reset, with this client's cancel on its way.
	ss.cancelMu.Lock()
	defer ss.cancelMu.Unlock()
	be := ss.beCur.Load()
	if be == nil {
		return
	}
	if h := ss.srv.testHookCancel; h != nil {
		h()
	}
	timeout := 5 * time.Second
	if d := ss.srv.testCancelTimeout; d > 0 {
		timeout = d
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := be.Cancel(ctx); err != nil {
		ss.srv.log.Warn("cancel request", "session", ss.id, "node", be.Node(), "err", err)
		ss.cancelLost = be // it may still arrive: never give be to another client
	}
}

// acquireCtx is the context of a wait for a pool backend: ss.ctx, ended
// also by a cancel request while the wait lasts (until acquireDone).
func (ss *session) acquireCtx() context.Context {
	ss.acqMu.Lock()
	defer ss.acqMu.Unlock()
	if ss.acq == nil || ss.acq.Err() != nil {
		ss.acq, ss.acqStop = context.WithCancel(ss.ctx)
	}
	ss.acquiring = true
	return ss.acq
}

// acquireDone ends the wait acquireCtx began; it reports whether a cancel
// request ended it.
func (ss *session) acquireDone() bool {
	ss.acqMu.Lock()
	defer ss.acqMu.Unlock()
	ss.acquiring = false
	return ss.acq.Err() != nil && ss.ctx.Err() == nil
}

// detachCancel makes the client's cancel requests reach no backend from
// now on, after one already on its way has reached the server: a backend
// given back to the pool, or reset for the next client, must not get a
// late cancel of this client's, which would cancel another client's query
// (or the DISCARD ALL that resets it). The server handles a cancel that
// finds its backend idle by ignoring it. A backend whose cancel request
// was not confirmed is marked broken, so that it is closed, not reused.
func (ss *session) detachCancel(be *pool.Conn) {
	ss.cancelMu.Lock()
	ss.detachCancelLocked(be)
	ss.cancelMu.Unlock()
}

func (ss *session) detachCancelLocked(be *pool.Conn) {
	ss.beCur.Store(nil)
	ss.breakIfCancelLostLocked(be)
}

// breakIfCancelLostLocked marks be broken when it is the backend of a
// cancel request its server did not confirm (under cancelMu).
func (ss *session) breakIfCancelLostLocked(be *pool.Conn) {
	if ss.cancelLost != nil && ss.cancelLost == be {
		be.MarkBroken()
		ss.cancelLost = nil
	}
}

// releaseAfterCancel gives be back to its pool: at once, or, when a cancel
// request of the client's is on its way to be's server, once it has got
// there (see detachCancel). The client does not wait for that: its answer,
// already relayed, is flushed while a goroutine of the router's waits for
// the cancel (up to cancelQuery's 5 s) and only then gives be back.
func (ss *session) releaseAfterCancel(be *pool.Conn) {
	if ss.cancelMu.TryLock() {
		// No cancel request is being sent (cancelQuery holds cancelMu for
		// all of it): the usual case, with no goroutine.
		ss.detachCancelLocked(be)
		ss.cancelMu.Unlock()
		be.Release()
		return
	}
	// A cancel request holds cancelMu. If it has not read beCur yet, it
	// finds nil (or the session's next backend, for a query of this same
	// client): only a request that already read be can reach be's server.
	ss.beCur.Store(nil)
	ss.srv.m.LateCancelReleases.Inc()
	ss.srv.wg.Add(1) // Serve waits for it before closing the pools
	go func() {
		defer ss.srv.wg.Done()
		ss.cancelMu.Lock()
		ss.breakIfCancelLostLocked(be) // not beCur: it may be the session's next backend by now
		ss.cancelMu.Unlock()
		be.Release()
	}()
}

// end returns or discards the session's backend.
func (ss *session) end() {
	if ss.be == nil {
		return
	}
	be := ss.be
	if ss.unsynced {
		// Extended-protocol work the client never ended with Sync: a
		// DISCARD ALL would commit it. Closing the connection rolls it back.
		be.MarkBroken()
	}
	ss.detachCancel(be) // the DISCARD ALL must not be cancelled either
	if ss.srv.cfg.PoolMode == PoolSession && ss.status == 'I' && len(ss.queue) == 0 && !be.Broken() {
		// Reset what the client may have changed. Should DISCARD ALL fail
		// (a lock its DISCARD TEMP waits for past lock_timeout, say), the
		// server rolled its resets back: the backend still holds this
		// client's temporary objects and settings, and is closed.
		be.W.Write(wire.AppendQuery(nil, "DISCARD ALL"))
		ss.queue = append(ss.queue, expect{kind: eQuery, swallow: true, reset: true})
		ss.syncs++
		ss.resetFailed = false
		be.SetDeadline(time.Now().Add(5 * time.Second))
		if err := ss.drain(false); err != nil || ss.be == nil || ss.resetFailed {
			if ss.be != nil {
				if ss.resetFailed {
					ss.srv.log.Warn("DISCARD ALL failed: closing the backend connection", "session", ss.id, "node", be.Node())
				}
				be.MarkBroken()
				ss.releaseBackend()
			}
			return
		}
		be.SetDeadline(time.Time{})
		be.Prepared = make(map[string]uint64)
		be.Schema, be.Tenant, be.SessionSig = "", "", ""
	} else if ss.status != 'I' || len(ss.queue) > 0 {
		be.MarkBroken()
	}
	ss.releaseBackend()
}

func (ss *session) setView() {
	t := ss.tenant
	ss.view.Store(&t)
}

func (ss *session) resig() {
	ss.setsPath = false
	if len(ss.sets) == 0 {
		ss.sig = ""
		return
	}
	var b strings.Builder
	for _, st := range ss.sets {
		b.WriteString(st.stmt)
		b.WriteString(";")
		if st.name == "search_path" {
			ss.setsPath = true
		}
	}
	ss.sig = b.String()
}

// mayOwnPath reports whether the client may set its own search_path: in
// session pool mode, where the backend is its own for the session, unless
// the user is restricted to a tenant (see Config.Access). In transaction
// mode the router sets the shard's search_path for every transaction on a
// backend shared with other clients, and SET search_path is refused.
func (ss *session) mayOwnPath() bool {
	return ss.srv.cfg.PoolMode == PoolSession && ss.access.Tenant == ""
}

// ownsPath reports whether the client's own search_path is in force, so
// that the router sets no shard path: the client set it (startup
// parameter, SET search_path, set_config('search_path', v, false)) and has
// not reset it (RESET search_path or ALL, SET search_path TO DEFAULT,
// DISCARD ALL). Until the statements that changed it are answered (an
// open transaction, a pipeline), their change counts; once the backend is
// idle with nothing pending, what committed (ss.sets) does.
func (ss *session) ownsPath() bool {
	if ss.pathNext != 0 && ss.status == 'I' && !ss.unsynced && !ss.backendPending() {
		ss.pathNext = 0
	}
	if ss.pathNext != 0 {
		return ss.pathNext > 0
	}
	return ss.setsPath
}

// pathSetting is the statement that sets search_path to v, a list as in
// a startup parameter or set_config (SET search_path TO 'a, b' would name
// one schema "a, b").
func pathSetting(v string) string {
	return "SELECT pg_catalog.set_config('search_path', " + quoteLiteral(v) + ", false)"
}

func sortStrings(ss []string) {
	for i := 1; i < len(ss); i++ {
		for j := i; j > 0 && ss[j] < ss[j-1]; j-- {
			ss[j], ss[j-1] = ss[j-1], ss[j]
		}
	}
}

func sortSettings(ps []setting) {
	for i := 1; i < len(ps); i++ {
		for j := i; j > 0 && ps[j].name < ps[j-1].name; j-- {
			ps[j], ps[j-1] = ps[j-1], ps[j]
		}
	}
}

// quoteLiteral quotes s as an SQL string literal, whatever
// standard_conforming_strings says.
func quoteLiteral(s string) string { return string(appendQuoteLiteral(nil, s)) }

// ignoredStartupWarning is the warning for a startup parameter the router
// owns (isReserved), which it ignores.
func ignoredStartupWarning(k string) *wire.Error {
	switch k {
	case "role", "session", "session_authorization":
		return &wire.Error{Severity: "WARNING", Code: "01000",
			Message: fmt.Sprintf("startup parameter %q is ignored: the router runs a user's transactions as the role configured for that user", k),
			Hint:    "Choose the role per router user: pgtenant user add USER --role ROLE."}
	}
	return &wire.Error{Severity: "WARNING", Code: "01000",
		Message: fmt.Sprintf("startup parameter %q is ignored: pgtenant sets search_path and pgtenant.tenant_id to the tenant's shard", k),
		Hint:    "Select the tenant with options=-c pgtenant.tenant=ID; statements then run with search_path set to the tenant's shard schema (a router in session pool mode takes a search_path of the client's own)."}
}
