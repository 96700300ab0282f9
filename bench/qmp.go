package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"time"
)

// qmpClient is the least a QMP client does: one JSON object per line in
// both directions, events skipped. It is the baseline the mount's
// monitor/qmp is compared with.
type qmpClient struct {
	conn net.Conn
	rd   *bufio.Reader
}

// qmpDial connects to a QMP socket, retrying until it exists and listens
// or timeout passes, reads the greeting and negotiates capabilities.
func qmpDial(path string, timeout time.Duration) (*qmpClient, error) {
	deadline := time.Now().Add(timeout)
	var conn net.Conn
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			conn = c
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("QMP %s: %w", path, err)
		}
		time.Sleep(200 * time.Microsecond)
	}
	conn.SetDeadline(deadline)
	q := &qmpClient{conn: conn, rd: bufio.NewReaderSize(conn, 64<<10)}
	greeting, err := q.readLine()
	if err != nil || !bytes.Contains(greeting, []byte(`"QMP"`)) {
		conn.Close()
		return nil, fmt.Errorf("QMP %s: no greeting: %v %s", path, err, greeting)
	}
	if _, err := q.run([]byte(`{"execute":"qmp_capabilities"}`)); err != nil {
		conn.Close()
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	return q, nil
}

func (q *qmpClient) readLine() ([]byte, error) {
	line, err := q.rd.ReadBytes('\n')
	if err != nil {
		return nil, err
	}
	return line, nil
}

// run sends one command and returns its reply (events are skipped).
func (q *qmpClient) run(cmd []byte) ([]byte, error) {
	if _, err := q.conn.Write(append(cmd, '\n')); err != nil {
		return nil, err
	}
	for {
		line, err := q.readLine()
		if err != nil {
			return nil, err
		}
		// QEMU writes events as {"timestamp": ..., "event": ...}.
		if bytes.HasPrefix(line, []byte(`{"event"`)) || bytes.HasPrefix(line, []byte(`{"timestamp"`)) {
			continue
		}
		if bytes.Contains(line, []byte(`"error"`)) {
			return line, fmt.Errorf("QMP error: %s", bytes.TrimSpace(line))
		}
		return line, nil
	}
}

func (q *qmpClient) close() { q.conn.Close() }

// qmpFile is a monitor/qmp handle of the mount: one open file, one
// session; write a command, read its reply.
type qmpFile struct {
	f   *os.File
	buf []byte
}

func openQMPFile(path string) (*qmpFile, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	return &qmpFile{f: f, buf: make([]byte, 64<<10)}, nil
}

// run writes one command and reads until its reply line is complete.
func (m *qmpFile) run(cmd []byte) ([]byte, error) {
	if _, err := m.f.Write(append(cmd, '\n')); err != nil {
		return nil, err
	}
	var out []byte
	for {
		n, err := m.f.Read(m.buf)
		out = append(out, m.buf[:n]...)
		if bytes.HasSuffix(out, []byte("\n")) {
			if bytes.Contains(out, []byte(`"error"`)) {
				return out, fmt.Errorf("QMP error: %s", bytes.TrimSpace(out))
			}
			return out, nil
		}
		if err != nil {
			return out, err
		}
		if n == 0 {
			return out, errors.New("monitor/qmp: EOF before a reply")
		}
	}
}

func (m *qmpFile) close() { m.f.Close() }
