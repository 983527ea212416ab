// Package stream reads a PostgreSQL logical replication stream (pgoutput,
// protocol version 1) as an ordinary role with the REPLICATION attribute and
// applies it elsewhere, without CREATE SUBSCRIPTION (which needs a superuser
// on PostgreSQL 15) or session_replication_role.
//
// It owns three things, each usable alone:
//
//   - Slots: CreateSlot makes a logical slot on a replication connection and
//     exports a snapshot, so that an initial copy taken with SET TRANSACTION
//     SNAPSHOT (while the slot's connection stays open and idle) is exactly
//     the state the stream continues from (Slot.ConsistentLSN).
//   - Decoding: Decoder turns pgoutput messages into plain values: Relation
//     (schema, table, columns with type OIDs and the replica identity), Change
//     (insert, update, delete, truncate with old key and new tuple as text
//     values) and Txn (one committed source transaction with its LSNs).
//   - Applying: Stream.Run receives the stream, hands each batch of committed
//     transactions to a caller's Applier, and reports the applied position to
//     the source (standby status updates) so it can recycle WAL. TableApplier
//     is an Applier that writes the changes into one target database, mapping
//     source relations to target tables.
//
// Exactly once: an Applier records the end LSN of the last transaction it
// applied in the same target transaction as the changes (SavePosition, in
// the table pgtenant_stream.position). A restarted stream starts at that
// position (LoadPosition) and Stream skips every transaction whose end LSN is
// at or below it, so a killed process resumes without loss or duplicates:
// the source only forgets WAL the target has committed. An AsyncApplier may
// return from Apply before the batch is durable (a pipeline per target,
// commits without waiting for the flush): the stream then confirms only its
// Durable position.
//
// Limits: a source transaction is held in memory until its commit arrives
// (protocol version 1 does not stream transactions in progress); tables need
// a primary key or a REPLICA IDENTITY (USING INDEX or FULL) for updates and
// deletes to be applied; ordinary triggers on the target fire when changes
// are applied unless the caller disables them (ALTER TABLE … DISABLE TRIGGER
// USER, which a table's owner may do).
package stream
