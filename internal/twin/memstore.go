package twin

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
)

// MemStore is an in-memory [Store] for tests and single-process demos.
type MemStore struct {
	mu    sync.Mutex
	twins map[[3]string][]byte // JSON copies: callers never share memory with the store
}

// NewMemStore returns an empty store.
func NewMemStore() *MemStore { return &MemStore{twins: map[[3]string][]byte{}} }

// Get implements [Store].
func (m *MemStore) Get(_ context.Context, tenant, device, name string) (*Twin, error) {
	m.mu.Lock()
	b, ok := m.twins[[3]string{tenant, device, name}]
	m.mu.Unlock()
	if !ok {
		return nil, ErrNotFound
	}
	var t Twin
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// Put implements [Store].
func (m *MemStore) Put(_ context.Context, t *Twin, expect uint64) error {
	if t.Revision != expect+1 {
		return fmt.Errorf("twin revision must be %d, got %d", expect+1, t.Revision)
	}
	b, err := json.Marshal(t)
	if err != nil {
		return err
	}
	k := [3]string{t.Tenant, t.Device, t.Name}
	m.mu.Lock()
	defer m.mu.Unlock()
	var cur uint64
	if old, ok := m.twins[k]; ok {
		var ot Twin
		if err := json.Unmarshal(old, &ot); err != nil {
			return err
		}
		cur = ot.Revision
	}
	if cur != expect {
		return fmt.Errorf("%w: stored revision %d, expected %d", ErrVersionConflict, cur, expect)
	}
	m.twins[k] = b
	return nil
}

var _ Store = (*MemStore)(nil)
