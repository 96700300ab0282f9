package driver

import (
	"fmt"
	"net"
	"strconv"
	"sync"
)

// portAllocator hands out free TCP ports for VNC/SPICE autoport from the
// qemu.conf range, never the same port to two running guests.
type portAllocator struct {
	mu       sync.Mutex
	min, max int
	used     map[int]bool
}

func newPortAllocator(min, max int) *portAllocator {
	return &portAllocator{min: min, max: max, used: map[int]bool{}}
}

// Get returns a port free on addr and marks it used.
func (p *portAllocator) Get(addr string) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for port := p.min; port <= p.max; port++ {
		if p.used[port] {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort(addr, strconv.Itoa(port)))
		if err != nil {
			continue // taken by someone else
		}
		l.Close()
		p.used[port] = true
		return port, nil
	}
	return 0, fmt.Errorf("no free port in %d..%d on %s (remote_display_port_min/max in qemu.conf)", p.min, p.max, addr)
}

// Reserve marks port used (a re-attached guest holds it).
func (p *portAllocator) Reserve(port int) {
	p.mu.Lock()
	p.used[port] = true
	p.mu.Unlock()
}

// Release frees port.
func (p *portAllocator) Release(port int) {
	p.mu.Lock()
	delete(p.used, port)
	p.mu.Unlock()
}
