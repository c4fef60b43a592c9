// Command local (installed as koffeeshop) runs the whole coffee shop on one
// machine: an embedded NATS JetStream (or an external NATS), the Broker
// ingress, the Trigger dispatchers and every function as its own process,
// all read from the Knative manifests in config/. Its other commands (send,
// order, events, status) work with a running shop; see koffeeshop help.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"unicode"

	"github.com/koffeeshop/koffeeshop/broker/natsconn"
	"github.com/koffeeshop/koffeeshop/broker/tracing"
	"github.com/koffeeshop/koffeeshop/local/cli"
	"github.com/koffeeshop/koffeeshop/local/runner"
)

func main() {
	if len(os.Args) > 1 && cli.IsCommand(os.Args[1]) {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	if len(os.Args) > 1 && os.Args[1] == "run" {
		os.Args = append(os.Args[:1], os.Args[2:]...)
	}
	os.Exit(run())
}

func run() int {
	flag.Usage = func() {
		cli.Help(flag.CommandLine.Output())
		fmt.Fprintln(flag.CommandLine.Output(), "\nkoffeeshop run flags:")
		flag.PrintDefaults()
	}
	var (
		configDir = flag.String("config", "config", "directory of Knative manifests")
		binDir    = flag.String("bin-dir", "bin", "directory of the function executables")
		build     = flag.Bool("build", false, "go build the functions' ko:// images into -bin-dir first")
		addr      = flag.String("addr", "127.0.0.1:8080", "Broker ingress listen address")
		dataDir   = flag.String("data-dir", ".koffeeshop/data", "embedded JetStream storage directory")
		natsURL   = flag.String("nats-url", "", "use this external NATS server instead of the embedded one")
		natsPort  = flag.Int("nats-port", -1, "embedded NATS client port (-1: any free port)")
		maxBody   = flag.Int64("max-body-bytes", 1<<20, "largest event the ingress accepts (413 above)")
		only      = flag.String("only", "", "comma-separated Services to run (with the Triggers that deliver to them); another runner on the same NATS runs the rest")
		name      = flag.String("name", "", "a tag in this runner's instance names, to tell runners apart")
		token     = flag.String("token", os.Getenv("KOFFEESHOP_INGRESS_TOKEN"), "bearer token the ingress requires (default $KOFFEESHOP_INGRESS_TOKEN; empty: none)")
		creds     = flag.String("nats-creds", "", "NATS credentials file for -nats-url")
		natsCA    = flag.String("nats-ca", "", "CA certificate to verify the NATS server's TLS certificate")
		natsCert  = flag.String("nats-cert", "", "client certificate for mutual TLS to NATS")
		natsKey   = flag.String("nats-key", "", "client key for mutual TLS to NATS")
		replicas  = flag.Int("replicas", 1, "JetStream replicas of the broker streams (3 on a three-node cluster)")
		verbose   = flag.Bool("v", false, "debug logging")
	)
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "koffeeshop: unknown command %q\n\n", flag.Arg(0))
		cli.Help(os.Stderr)
		return cli.Usage
	}

	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	stopWithMake(ctx, stop)
	tracing.LogErrors(log)

	dirs := []string{*configDir}
	if *build {
		log.Info("building functions", "bin", *binDir)
		if err := runner.Build(ctx, dirs, *binDir); err != nil {
			log.Error("build failed", "err", err)
			return 1
		}
	}
	r, err := runner.New(ctx, runner.Options{
		ConfigDirs: dirs,
		Only:       strings.FieldsFunc(*only, func(r rune) bool { return r == ',' || unicode.IsSpace(r) }),
		Name:       *name,
		NATS: runner.NATSOptions{
			External: natsconn.Options{URL: *natsURL, CredsFile: *creds, CAFile: *natsCA, CertFile: *natsCert, KeyFile: *natsKey},
			DataDir:  *dataDir,
			Port:     *natsPort,
			Replicas: *replicas,
		},
		HTTP:      runner.HTTPOptions{Addr: *addr, Token: *token, MaxBodyBytes: *maxBody},
		Functions: runner.FunctionOptions{BinDir: *binDir, Output: os.Stderr},
	}, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	log.Info("koffeeshop is running", "ingress", r.IngressURL(), "brokers", strings.Join(r.Brokers(), ","), "nats", r.NATSURL())
	if len(*only) == 0 {
		fmt.Fprintf(os.Stderr, "\nThe coffee-shop board: %s\n", r.BoardURL())
	}
	auth := ""
	if *token != "" {
		auth = ` -H "Authorization: Bearer $KOFFEESHOP_INGRESS_TOKEN"`
	}
	fmt.Fprintf(os.Stderr, "\nPlace an order and follow it:\n\n  ./bin/koffeeshop order --addr %s --customer ada --beverage latte --wait\n\nor with curl:\n\n  curl -i -X POST %s/%s%s \\\n    -H 'ce-specversion: 1.0' -H 'ce-type: com.koffeeshop.order.placed' \\\n    -H 'ce-source: /curl' -H \"ce-id: $(date +%%s%%N)\" -H 'content-type: application/json' \\\n    -d '{\"customer\":\"ada\",\"beverage\":\"latte\"}'\n\nWatch the events: ./bin/koffeeshop events --addr %s; the shop's state: ./bin/koffeeshop status --addr %s\nCtrl-C stops everything.\n\n", r.IngressURL(), r.IngressURL(), r.Brokers()[0], auth, r.IngressURL(), r.IngressURL())
	if err := r.Run(ctx); err != nil {
		log.Error("stopped with an error", "err", err)
		return 1
	}
	return 0
}
