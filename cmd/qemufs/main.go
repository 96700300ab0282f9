// Command qemufs is a QEMU hypervisor driver whose interface is a mounted
// filesystem. See `qemufs help` and docs/reference.md.
package main

import (
	"fmt"
	"os"

	"github.com/qemufs/qemufs/procmgr"
	"github.com/qemufs/qemufs/sftpserver"
)

// version is set at build time (-ldflags -X main.version=...).
var version = "dev"

const usage = `usage:
  qemufs mount [--root DIR | --system] [--daemon] MOUNTPOINT
  qemufs unmount MOUNTPOINT          same as fusermount3 -u
  qemufs to-native FILE.xml          print the QEMU command line of a domain XML
  qemufs from-native FILE.args       turn a QEMU command line into domain XML
  qemufs capabilities                print capabilities.xml without mounting
  qemufs sftp-server                 serve SFTP on stdin/stdout, for sshfs -o sftp_server=
                                     (docs/remote.md)
  qemufs version
`

func main() {
	if len(os.Args) > 1 && os.Args[1] == procmgr.HelperArg {
		procmgr.RunHelper() // never returns
	}
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmd, args := os.Args[1], os.Args[2:]
	var err error
	switch cmd {
	case "mount":
		err = runMount(args)
	case "unmount", "umount":
		err = runUnmount(args)
	case "to-native":
		err = runToNative(args)
	case "from-native":
		err = runFromNative(args)
	case "capabilities":
		err = runCapabilities(args)
	case "sftp-server":
		err = sftpserver.Serve(os.Stdin, os.Stdout)
	case "version", "--version":
		fmt.Println("qemufs", version)
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "qemufs: unknown command %q\n%s", cmd, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "qemufs:", err)
		os.Exit(1)
	}
}
