package stream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Applier applies committed source transactions to a target.
type Applier interface {
	// Apply applies txns (in commit order, at least one) and returns once
	// they are durable, together with their position (the last EndLSN,
	// see SavePosition). On error nothing of the batch may be applied.
	Apply(ctx context.Context, txns []*Txn) error
}

// AsyncApplier is an Applier whose Apply may return before the batch is
// durable on its targets (applied in a pipeline per target, or committed
// without waiting for the target's flush). The stream then confirms to the
// source only what Durable says, so the source keeps every transaction a
// crash of a target could lose. An AsyncApplier reports a failure that
// happens after Apply returned by ending the stream's context (with a cause).
type AsyncApplier interface {
	Applier
	// Durable returns the end LSN up to which every transaction handed to
	// Apply is durable on its targets (zero: none yet).
	Durable() LSN
}

// ApplierFunc adapts a function to Applier.
type ApplierFunc func(ctx context.Context, txns []*Txn) error

// Apply calls f.
func (f ApplierFunc) Apply(ctx context.Context, txns []*Txn) error { return f(ctx, txns) }

// Config configures a Stream.
type Config struct {
	// DSN is the source database (an ordinary connection string; the
	// stream adds replication=database). Required.
	DSN string
	// Slot is the logical slot to stream from (see CreateSlot). Required.
	Slot string
	// Publications are the publications whose tables are streamed. Required.
	Publications []string
	// Start is the position already applied (LoadPosition): streaming starts
	// there and transactions ending at or before it are skipped. Zero means
	// the slot's confirmed position.
	Start LSN
	// Applier receives the committed transactions. Required.
	Applier Applier
	// StatusInterval is how often the applied position is reported to the
	// source. Zero means 1s.
	StatusInterval time.Duration
	// MaxBatch bounds the changes handed to one Apply call (whole
	// transactions; a larger transaction goes alone). Zero means 10,000.
	MaxBatch int
	// Logger receives start and stop lines. Nil discards.
	Logger *slog.Logger
}

// Stream receives a slot's changes and applies them. Create it with New,
// then call Run.
type Stream struct {
	cfg      Config
	log      *slog.Logger
	applied  atomic.Uint64
	received atomic.Uint64
}

// New returns a Stream for cfg. It does no I/O.
func New(cfg Config) *Stream {
	if cfg.StatusInterval <= 0 {
		cfg.StatusInterval = time.Second
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 10000
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Stream{cfg: cfg, log: log}
	s.applied.Store(uint64(cfg.Start))
	return s
}

// Applied returns the end LSN up to which transactions are applied
// (Config.Start before any): durably, the position the source is told.
// For an AsyncApplier it is the applier's Durable position.
func (s *Stream) Applied() LSN {
	pos := LSN(s.applied.Load())
	if aa, ok := s.cfg.Applier.(AsyncApplier); ok {
		pos = min(pos, max(s.cfg.Start, aa.Durable()))
	}
	return pos
}

// Received returns the end LSN of the last transaction received.
func (s *Stream) Received() LSN { return LSN(s.received.Load()) }

// Run streams until ctx ends (then it returns ctx's error) or an error
// occurs (the source's, the connection's or the Applier's).
func (s *Stream) Run(ctx context.Context) error {
	if s.cfg.DSN == "" || s.cfg.Slot == "" || len(s.cfg.Publications) == 0 || s.cfg.Applier == nil {
		return errors.New("stream: DSN, Slot, Publications and Applier are required")
	}
	conn, err := Connect(ctx, s.cfg.DSN)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	pubs := make([]string, len(s.cfg.Publications))
	for i, p := range s.cfg.Publications {
		pubs[i] = strings.ReplaceAll(p, `"`, `""`)
	}
	args := []string{"proto_version '1'", fmt.Sprintf(`publication_names '"%s"'`, strings.ReplaceAll(strings.Join(pubs, `","`), `'`, `''`))}
	if err := pglogrepl.StartReplication(ctx, conn, s.cfg.Slot, s.cfg.Start, pglogrepl.StartReplicationOptions{Mode: pglogrepl.LogicalReplication, PluginArgs: args}); err != nil {
		return fmt.Errorf("start replication from slot %s: %w", s.cfg.Slot, err)
	}
	s.log.Info("stream started", "slot", s.cfg.Slot, "from", s.cfg.Start)

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	txc := make(chan *Txn, 4096) // room for large batches while the applier works
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := s.applyLoop(ctx, txc); err != nil {
			cancel(err)
		}
	}()
	err = s.receive(ctx, conn, txc)
	cancel(err)
	wg.Wait()
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, err) {
		err = cause // the applier's error, which stopped the receiver
	}
	s.log.Info("stream stopped", "slot", s.cfg.Slot, "applied", s.Applied(), "err", err)
	return err
}

// applyLoop hands batches of received transactions to the Applier.
func (s *Stream) applyLoop(ctx context.Context, txc <-chan *Txn) error {
	for {
		var t *Txn
		select {
		case <-ctx.Done():
			return nil
		case t = <-txc:
		}
		batch, n := []*Txn{t}, len(t.Changes)
	drain:
		for n < s.cfg.MaxBatch {
			select {
			case t := <-txc:
				batch = append(batch, t)
				n += len(t.Changes)
			default:
				break drain
			}
		}
		if err := s.cfg.Applier.Apply(ctx, batch); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("apply transactions up to %s: %w", batch[len(batch)-1].EndLSN, err)
		}
		s.applied.Store(uint64(batch[len(batch)-1].EndLSN))
	}
}

// receive reads the replication stream, sends committed transactions to
// txc, and reports the applied position every StatusInterval and when asked.
func (s *Stream) receive(ctx context.Context, conn *pgconn.PgConn, txc chan<- *Txn) error {
	dec := NewDecoder()
	inTxn := false
	idleEnd := LSN(0) // the server's position while nothing was pending: safe to confirm
	next := time.Now().Add(s.cfg.StatusInterval)
	report := func() error {
		pos := s.Applied()
		if idleEnd > pos && s.Received() <= pos {
			pos = idleEnd
		}
		if err := pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: pos}); err != nil {
			return fmt.Errorf("send standby status: %w", err)
		}
		next = time.Now().Add(s.cfg.StatusInterval)
		return nil
	}
	// Reads are bounded by a deadline on the socket rather than a context per
	// message (pgconn watches a cancellable context with a goroutine per call).
	stop := context.AfterFunc(ctx, func() { _ = conn.Conn().SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	for {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if !time.Now().Before(next) {
			if err := report(); err != nil {
				return err
			}
		}
		if err := conn.Conn().SetReadDeadline(next); err != nil {
			return fmt.Errorf("receive from slot %s: %w", s.cfg.Slot, err)
		}
		raw, err := conn.ReceiveMessage(context.Background())
		if err != nil {
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			if pgconn.Timeout(err) {
				continue
			}
			return fmt.Errorf("receive from slot %s: %w", s.cfg.Slot, err)
		}
		switch msg := raw.(type) {
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("stream from slot %s: %w", s.cfg.Slot, pgconn.ErrorResponseToPgError(msg))
		case *pgproto3.CopyData:
			if len(msg.Data) == 0 {
				continue
			}
			switch msg.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(msg.Data[1:])
				if err != nil {
					return fmt.Errorf("stream from slot %s: %w", s.cfg.Slot, err)
				}
				if !inTxn {
					idleEnd = ka.ServerWALEnd
				}
				if ka.ReplyRequested {
					next = time.Time{}
				}
			case pglogrepl.XLogDataByteID:
				xld, err := pglogrepl.ParseXLogData(msg.Data[1:])
				if err != nil {
					return fmt.Errorf("stream from slot %s: %w", s.cfg.Slot, err)
				}
				inTxn = true
				t, err := dec.Decode(xld.WALData)
				if err != nil {
					return fmt.Errorf("stream from slot %s at %s: %w", s.cfg.Slot, xld.WALStart, err)
				}
				if t == nil {
					continue
				}
				inTxn = false
				if t.EndLSN <= s.cfg.Start {
					continue // applied before a restart
				}
				s.received.Store(uint64(t.EndLSN))
				select {
				case txc <- t:
				case <-ctx.Done():
					return context.Cause(ctx)
				}
			}
		default:
			// NoticeResponse and the like.
		}
	}
}
