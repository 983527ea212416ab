// Package tenantops owns the operations on one tenant's rows across the
// tables registry (package tables): moving a tenant to another shard online
// (Move: copy at a snapshot, catch-up from a change queue filled by row
// triggers, a fence of that tenant only, flip of its placement, deletion of
// the old rows), exporting its rows to a file and importing them again, into
// the same catalog or another (Export, Import), and purging them (Purge,
// Remove). Every operation finds the tenant's rows the same way: tenant
// tables by their tenant column, child tables through their parent's (the
// registry's join path); a table of the shard without a rule stops it before
// anything changes.
package tenantops
