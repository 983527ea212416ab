package router

import (
	"crypto/tls"
	"log/slog"
	"time"
)

// AuthMethod is how clients prove who they are.
type AuthMethod string

// Client authentication methods.
const (
	AuthSCRAM AuthMethod = "scram-sha-256"
	AuthMD5   AuthMethod = "md5"
	AuthTrust AuthMethod = "trust"
)

// Credential is a user's password in stored (hashed) form, as PostgreSQL
// keeps it in pg_authid.rolpassword; either field may be empty.
type Credential struct {
	// SCRAM is a SCRAM-SHA-256 verifier:
	// "SCRAM-SHA-256$<iterations>:<salt base64>$<StoredKey base64>:<ServerKey base64>"
	// (wire.SCRAMVerifier makes one from a password).
	SCRAM string
	// MD5 is "md5" followed by hex(md5(password + user)) (wire.MD5Hash).
	MD5 string
}

// PoolMode says how long a client keeps a backend connection.
type PoolMode string

// Pool modes.
const (
	// PoolTransaction returns the backend when each transaction ends.
	PoolTransaction PoolMode = "transaction"
	// PoolSession keeps the backend for the client's whole session.
	PoolSession PoolMode = "session"
)

// PoolConfig limits each node's pool of backend connections.
type PoolConfig struct {
	// MaxSize is the most backend connections per node. Zero means 20.
	MaxSize int
	// MinIdle connections per node are kept open. Zero means none.
	MinIdle int
	// IdleTimeout closes backend connections unused this long. Zero means
	// 5 minutes; negative means never.
	IdleTimeout time.Duration
	// MaxLifetime retires backend connections this old. Zero means 1 hour;
	// negative means never.
	MaxLifetime time.Duration
	// WaitTimeout bounds how long a transaction waits for a free backend
	// connection when the node's pool is full; then it fails with 53300.
	// Zero means 5 seconds.
	WaitTimeout time.Duration
	// ConnectTimeout bounds opening one backend connection. Zero means 5 seconds.
	ConnectTimeout time.Duration
	// FairAfter bounds how long a transaction waiting for a backend of a
	// full pool waits behind later ones: a released backend goes to the
	// transaction that began to wait last (its session's data still in the
	// CPU's caches) unless one has waited FairAfter or more, which then
	// goes first (pool.Config.FairAfter). Zero means 1 second; negative
	// means first come, first served always; at most half of WaitTimeout.
	FairAfter time.Duration
	// CheckIdle: a backend connection idle at least this long is checked
	// (without a round trip) before it is handed out, so one the server
	// closed meanwhile is replaced. Zero means at every checkout; negative
	// means never.
	CheckIdle time.Duration
}

// Config configures a Server. The zero value is usable: it listens on
// 127.0.0.1:6432 with SCRAM authentication and no users (so nobody can log
// in until Users is filled), in transaction mode.
type Config struct {
	// Listen is the TCP address to listen on. Empty means 127.0.0.1:6432.
	Listen string
	// TLS, when set, answers SSLRequest with 'S' and serves TLS. Nil means
	// SSLRequest is answered 'N' (clients with sslmode=require fail,
	// sslmode=prefer continues in plain text).
	TLS *tls.Config
	// RequireTLS refuses clients that did not negotiate TLS, with FATAL
	// 28000 (as pg_hba's hostssl lines do). It needs TLS.
	RequireTLS bool
	// RequireTLSUsers refuses these users without TLS, as RequireTLS does
	// for all. Nil means none.
	RequireTLSUsers []string
	// Auth is the client authentication method. Empty means scram-sha-256.
	Auth AuthMethod
	// Users maps user names to passwords. With AuthTrust it is ignored
	// (every user is let in); otherwise only these users, and those
	// Credentials knows, can log in.
	Users map[string]string
	// Credentials, when set, is consulted for a user not in Users (for
	// example users kept in the catalog as password hashes). It returns the
	// user's stored credential and whether the user exists; it is called
	// once per login, from the connection's goroutine, and must be safe for
	// concurrent use. With scram-sha-256 auth the SCRAM verifier is used;
	// with md5 auth the MD5 hash is used, or, when the credential has only
	// a SCRAM verifier, the client is asked for SCRAM instead (as PostgreSQL
	// does). A user without a usable form is refused with 28P01.
	Credentials func(user string) (Credential, bool)
	// Access, when set, says how a user's transactions run (the role on
	// the nodes, a tenant the user is restricted to); it is called once
	// per login and must be safe for concurrent use. Nil runs every user
	// as the node connection's own user, unrestricted.
	Access func(user string) UserAccess
	// Database, when set, is the only database name clients may connect
	// with (others get 3D000, as from a server); empty accepts any name.
	// The shards' own database is in each node's DSN either way.
	Database string
	// PoolMode is transaction (empty) or session.
	PoolMode PoolMode
	// DDL is what a schema-changing statement sent for a tenant gets,
	// which changes that tenant's shard only: DDLWarn (empty), DDLRefuse
	// or DDLAllow.
	DDL DDLMode
	// Pool limits each node's backend pool.
	Pool PoolConfig
	// ResetTenantAfterTransaction, when set, resets a client's session
	// tenant (SET pgtenant.tenant) to its startup value, or to none, after
	// each transaction that ran on a tenant's shard (a statement outside a
	// transaction block is a transaction of its own), so a client reused
	// by an application's connection pool does not carry one request's
	// tenant into the next. False (the default) keeps the tenant for the
	// session, as a server keeps a SET.
	ResetTenantAfterTransaction bool
	// MaxPrepared bounds the statements the router keeps prepared on one
	// backend connection (one per client statement text and shard schema,
	// and a few of its own); past it, client statements are closed, down
	// to seven eighths of it, when a client next gets that connection.
	// Zero means 1000.
	MaxPrepared int
	// MaxMessage bounds one protocol message from a client or server, in
	// bytes. Zero means 64 MiB.
	MaxMessage int
	// MaxMessageMemory bounds the memory held at once, across all clients,
	// for client message bodies larger than wire.PinnedMax (128 KiB): such a
	// body is read only once its size fits in what is left, and counts until
	// the router reads that client's next message. Zero means 256 MiB (four
	// messages at the 64 MiB MaxMessage, eight of 32 MiB); negative means no
	// bound (a client message then costs its size, each at once).
	MaxMessageMemory int64
	// MessageMemoryWait is how long a large client message waits for
	// MaxMessageMemory; then it is discarded and the client gets 53200
	// (out_of_memory). Zero means 10 seconds.
	MessageMemoryWait time.Duration
	// MaxClients bounds concurrent client connections; more are refused
	// with 53300. Zero means 1000.
	MaxClients int
	// StartupTimeout bounds the time from accepting a connection to the end
	// of authentication (clients that connect and say nothing are closed).
	// Zero means 10 seconds.
	StartupTimeout time.Duration
	// ClientIdleTimeout closes clients idle (outside a transaction, waiting
	// for their next message) this long. Zero means never.
	ClientIdleTimeout time.Duration
	// FenceGrace is how long SetMap waits for in-flight transactions on a
	// newly fenced shard before it cuts their backend connections. Zero
	// means 2 seconds.
	FenceGrace time.Duration
	// HoldTimeout is how long a transaction for a fenced shard is held
	// before it fails with 40001. Zero means 10 seconds.
	HoldTimeout time.Duration
	// NoPrewarm turns pre-warming off: by default, when the map names the
	// node a shard is being moved to (placement.Shard.Target), the router
	// opens and primes connections to it before the flip (prewarm.go), so
	// the transactions held by the fence find warm backends there.
	NoPrewarm bool
	// SharedSchema is the schema searched after the shard's: every
	// transaction runs with search_path "shard_NNNN", SharedSchema,
	// pg_temp. Extensions and reference tables live there; pg_temp comes
	// last, explicitly, so that no temporary object shadows a shard's
	// table. Empty means "public"; NoSharedSchema leaves it out.
	SharedSchema string
	// NoSharedSchema makes the search_path "shard_NNNN", pg_temp.
	NoSharedSchema bool
	// IdleInTransactionTimeout ends a client that stays idle inside a
	// transaction this long, as Postgres' idle_in_transaction_session_timeout
	// does: it gets FATAL 25P03, its transaction is rolled back and its
	// backend connection goes back to the pool. Extended-protocol work not
	// yet ended by Sync counts as a transaction (its backend is closed).
	// Zero means 60 seconds; negative means never.
	IdleInTransactionTimeout time.Duration
	// Logger receives session start/end and state changes. Nil discards.
	Logger *slog.Logger
	// Metrics receives counters; nil means NewMetrics() (see Server.Metrics).
	Metrics *Metrics
	// UsageCapacity is the most tenants whose usage (transactions,
	// statements, errors, backend time, bytes) the router keeps, in a
	// space-saving sketch (package usage). Zero means 1000; negative turns
	// counting off.
	UsageCapacity int
	// UsageTopK is how many tenants, the busiest by backend time, are
	// exported as pgtenant_tenant_* Prometheus series. Zero means 20.
	UsageTopK int
	// UsageSampleBelow: a transaction without an error that held its
	// backend less than this is counted with probability held/UsageSampleBelow
	// and then stands for that many (usage.SampleWeight): the counts are
	// unbiased estimates, exact for errors and longer transactions (a busy
	// router: usage.SuggestedSampleBelow). Zero or negative counts every
	// transaction exactly.
	UsageSampleBelow time.Duration

	// testParkTick, when set (by tests), replaces parkTick (park_linux.go).
	testParkTick time.Duration
}

// DefaultMaxMessageMemory is Config.MaxMessageMemory's default: 256 MiB.
const DefaultMaxMessageMemory = 256 << 20

// DefaultIdleInTransactionTimeout is Config.IdleInTransactionTimeout's
// default: a minute is far longer than an app's transaction waits on its own
// work, and short enough that a client gone silent in a transaction frees
// its backend connection, its locks and vacuum's horizon soon (GitLab.com
// runs its Postgres with idle_in_transaction_session_timeout = 60s).
const DefaultIdleInTransactionTimeout = 60 * time.Second

func (c Config) withDefaults() Config {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:6432"
	}
	if c.Auth == "" {
		c.Auth = AuthSCRAM
	}
	if c.PoolMode == "" {
		c.PoolMode = PoolTransaction
	}
	if c.DDL == "" {
		c.DDL = DDLWarn
	}
	if c.MaxPrepared <= 0 {
		c.MaxPrepared = 1000
	}
	if c.MaxMessageMemory == 0 {
		c.MaxMessageMemory = DefaultMaxMessageMemory
	}
	if c.MessageMemoryWait <= 0 {
		c.MessageMemoryWait = 10 * time.Second
	}
	if c.MaxClients <= 0 {
		c.MaxClients = 1000
	}
	if c.StartupTimeout <= 0 {
		c.StartupTimeout = 10 * time.Second
	}
	if c.FenceGrace <= 0 {
		c.FenceGrace = 2 * time.Second
	}
	if c.HoldTimeout <= 0 {
		c.HoldTimeout = 10 * time.Second
	}
	if c.SharedSchema == "" {
		c.SharedSchema = "public"
	}
	if c.IdleInTransactionTimeout == 0 {
		c.IdleInTransactionTimeout = DefaultIdleInTransactionTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Metrics == nil {
		c.Metrics = NewMetrics()
	}
	if c.UsageCapacity == 0 {
		c.UsageCapacity = 1000
	}
	if c.UsageTopK <= 0 {
		c.UsageTopK = 20
	}
	return c
}
