package sqlscan

import (
	"container/list"
	"sync"
)

// Cache remembers Decide's answers by statement text, least recently used
// first out, within a byte budget. It is safe for concurrent use. Parsing
// costs tens of microseconds; a cached answer a map lookup.
type Cache struct {
	mu      sync.Mutex
	max     int
	used    int
	entries map[string]*list.Element
	order   list.List // front: most recently used
}

type cacheEntry struct {
	sql string
	d   Decision
}

// NewCache returns a cache holding up to maxBytes of statement text (zero
// means 4 MiB). A text longer than an eighth of it is decided every time.
func NewCache(maxBytes int) *Cache {
	if maxBytes <= 0 {
		maxBytes = 4 << 20
	}
	return &Cache{max: maxBytes, entries: make(map[string]*list.Element)}
}

// Decide is the package's Decide, cached.
func (c *Cache) Decide(sql string) Decision {
	c.mu.Lock()
	if e, ok := c.entries[sql]; ok {
		c.order.MoveToFront(e)
		d := e.Value.(*cacheEntry).d
		c.mu.Unlock()
		return d
	}
	c.mu.Unlock()
	d := Decide(sql)
	if len(sql) > c.max/8 {
		return d
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[sql]; ok {
		return d
	}
	c.entries[sql] = c.order.PushFront(&cacheEntry{sql: sql, d: d})
	c.used += len(sql)
	for c.used > c.max {
		e := c.order.Back()
		ce := e.Value.(*cacheEntry)
		c.order.Remove(e)
		delete(c.entries, ce.sql)
		c.used -= len(ce.sql)
	}
	return d
}

// Len is the number of statement texts cached.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}
