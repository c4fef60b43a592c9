// Package kubeapi runs a real Kubernetes API server on this machine, for
// the tests of the cluster path: etcd and kube-apiserver as processes on
// random loopback ports, with a temporary data dir, a token file, the
// service-account keys and a kubeconfig for clients. No kubelet, no
// controller manager: objects are stored and served, nothing runs them.
package kubeapi

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Options say where the binaries are.
type Options struct {
	// APIServer is the kube-apiserver binary (`make kube-apiserver`).
	APIServer string
	// Etcd is the etcd binary (Debian's etcd-server), default "etcd".
	Etcd string
	// Dir holds the data, keys and kubeconfig; it must exist.
	Dir string
	// Output receives both processes' output (default: discarded).
	Output io.Writer
	// ReadyTimeout bounds the start (default 90 s).
	ReadyTimeout time.Duration
}

// Server is a running API server.
type Server struct {
	// Config is an admin client config (system:masters).
	Config *rest.Config
	// Kubeconfig is a kubeconfig file with the same admin credentials.
	Kubeconfig string
	// URL is the API server's https address.
	URL string

	etcd, apiserver *exec.Cmd
	exited          map[*exec.Cmd]chan struct{}
}

// Start starts etcd, then kube-apiserver, and waits until /readyz answers.
func Start(ctx context.Context, o Options) (_ *Server, err error) {
	if o.Etcd == "" {
		o.Etcd = "etcd"
	}
	if o.Output == nil {
		o.Output = io.Discard
	}
	if o.ReadyTimeout <= 0 {
		o.ReadyTimeout = 90 * time.Second
	}
	for _, bin := range []string{o.APIServer, o.Etcd} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("kubeapi: %w", err)
		}
	}
	s := &Server{exited: map[*exec.Cmd]chan struct{}{}}
	defer func() {
		if err != nil {
			s.Stop()
		}
	}()
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	s.etcd = exec.Command(o.Etcd,
		"--name=koffeeshop", "--data-dir="+filepath.Join(o.Dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=koffeeshop="+peerURL, "--log-level=warn")
	if err := s.start(s.etcd, o.Output); err != nil {
		return nil, err
	}

	token, err := randomToken()
	if err != nil {
		return nil, err
	}
	if err := writeKeys(o.Dir, token); err != nil {
		return nil, err
	}
	s.URL = "https://127.0.0.1:" + strconv.Itoa(ports[2])
	pki := filepath.Join(o.Dir, "pki")
	s.apiserver = exec.Command(o.APIServer,
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(ports[2]),
		"--cert-dir="+pki,
		"--token-auth-file="+filepath.Join(o.Dir, "tokens.csv"),
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+filepath.Join(o.Dir, "sa.pub"),
		"--service-account-signing-key-file="+filepath.Join(o.Dir, "sa.key"),
		"--service-cluster-ip-range=10.96.0.0/16",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--v=0")
	if err := s.start(s.apiserver, o.Output); err != nil {
		return nil, err
	}
	s.Config = &rest.Config{Host: s.URL, BearerToken: token, QPS: 100, Burst: 200,
		TLSClientConfig: rest.TLSClientConfig{CAFile: filepath.Join(pki, "apiserver.crt")}}
	if err := s.awaitReady(ctx, token, o.ReadyTimeout); err != nil {
		return nil, err
	}
	s.Kubeconfig = filepath.Join(o.Dir, "kubeconfig")
	if err := s.writeKubeconfig(token); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) start(cmd *exec.Cmd, out io.Writer) error {
	cmd.Stdout, cmd.Stderr = out, out
	// The processes die with the test binary, whatever becomes of it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("kubeapi: start %s: %w", filepath.Base(cmd.Path), err)
	}
	done := make(chan struct{})
	s.exited[cmd] = done
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	return nil
}

// awaitReady polls /readyz until it answers 200, a process dies, or the
// timeout passes. The serving certificate is made by kube-apiserver on
// its first start, so the poll trusts whatever it presents; clients use
// Config, which trusts that certificate by file.
func (s *Server) awaitReady(ctx context.Context, token string, timeout time.Duration) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		Proxy:           nil,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // loopback, readiness only
	}}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last string
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+"/readyz", nil)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		if resp, err := client.Do(req); err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, body)
		} else {
			last = err.Error()
		}
		for cmd, done := range s.exited {
			select {
			case <-done:
				return fmt.Errorf("kubeapi: %s exited before the API server was ready", filepath.Base(cmd.Path))
			default:
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kubeapi: not ready after %s: %s", timeout, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// PIDs are the processes' ids: kube-apiserver, then etcd.
func (s *Server) PIDs() []int {
	var pids []int
	for _, cmd := range []*exec.Cmd{s.apiserver, s.etcd} {
		if cmd != nil && cmd.Process != nil {
			pids = append(pids, cmd.Process.Pid)
		}
	}
	return pids
}

// Stop stops kube-apiserver, then etcd, and waits for both. It may be
// called more than once.
func (s *Server) Stop() {
	for _, cmd := range []*exec.Cmd{s.apiserver, s.etcd} {
		done, ok := s.exited[cmd]
		if cmd == nil || !ok {
			continue
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
}

func (s *Server) writeKubeconfig(token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["koffeeshop"] = &clientcmdapi.Cluster{Server: s.URL, CertificateAuthority: s.Config.CAFile}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["koffeeshop"] = &clientcmdapi.Context{Cluster: "koffeeshop", AuthInfo: "admin"}
	cfg.CurrentContext = "koffeeshop"
	if err := clientcmd.WriteToFile(*cfg, s.Kubeconfig); err != nil {
		return fmt.Errorf("kubeapi: kubeconfig: %w", err)
	}
	return nil
}

// writeKeys writes the token file (one admin in system:masters) and the
// service-account signing key pair.
func writeKeys(dir, token string) error {
	tokens := token + ",koffeeshop-admin,koffeeshop-admin,system:masters\n"
	if err := os.WriteFile(filepath.Join(dir, "tokens.csv"), []byte(tokens), 0o600); err != nil {
		return fmt.Errorf("kubeapi: token file: %w", err)
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("kubeapi: service-account key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return fmt.Errorf("kubeapi: service-account key: %w", err)
	}
	for name, block := range map[string]*pem.Block{
		"sa.key": {Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)},
		"sa.pub": {Type: "PUBLIC KEY", Bytes: pub},
	} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(block), 0o600); err != nil {
			return fmt.Errorf("kubeapi: %s: %w", name, err)
		}
	}
	return nil
}

func randomToken() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("kubeapi: token: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// freePorts finds n free loopback ports. Another process could take one
// before etcd or kube-apiserver binds it; the start then fails loudly.
func freePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("kubeapi: free port: %w", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
