package runner_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/koffeeshop/koffeeshop/broker/testkit"
	"github.com/koffeeshop/koffeeshop/local/gobuild"
	"github.com/koffeeshop/koffeeshop/local/loadgen"
)

// BenchmarkBurst measures the time to absorb a burst of 1,000 orders (all
// placed, accepted, brewed with 0 s brew time and notified) starting from
// zero instances, as the median of repeated runs.
func BenchmarkBurst(b *testing.B) {
	const orders, runs = 1000, 3
	for range b.N {
		var took []time.Duration
		for r := range runs {
			s := startShopWith(b, shopOptions{configDir: scaledConfig(b, retention("2s")...)})
			start := time.Now()
			var wg sync.WaitGroup
			for w := range 8 {
				wg.Go(func() {
					for i := w; i < orders; i += 8 {
						body := fmt.Sprintf(`{"customer":"c-%d","beverage":"latte"}`, i)
						if resp, _ := testkit.PostBinary(b, s.IngressURL()+"/default/default", testkit.Event(fmt.Sprintf("burst-%d-%d", r, i), "/bench", "com.koffeeshop.order.placed", body)); resp.StatusCode != http.StatusAccepted {
							b.Errorf("status %d", resp.StatusCode)
							return
						}
					}
				})
			}
			wg.Wait()
			accepted := time.Since(start)
			s.collector.WaitType(b, "com.koffeeshop.customer.notified", orders, 120*time.Second)
			took = append(took, time.Since(start))
			s.stop()
			fmt.Printf("burst run %d: 1000 orders accepted in %s, all notified after %s\n", r+1, accepted.Round(time.Millisecond), took[r].Round(time.Millisecond))
		}
		m := loadgen.Median(took)
		b.ReportMetric(float64(m.Milliseconds()), "ms/1000-orders")
		b.ReportMetric(float64(orders)/m.Seconds(), "orders/s")
		fmt.Printf("burst of %d orders from zero, 0 s brew: median %s over %d runs (%.0f orders/s)\n", orders, m.Round(time.Millisecond), runs, float64(orders)/m.Seconds())
	}
}

// BenchmarkIdleMemory runs the runner binary with every function at zero
// and reads its resident memory once it is idle, as the median of repeated
// starts.
func BenchmarkIdleMemory(b *testing.B) {
	bin := filepath.Join(binDir, "koffeeshop")
	if err := gobuild.Command(context.Background(), bin, "github.com/koffeeshop/koffeeshop/local").Run(); err != nil {
		b.Fatal(err)
	}
	for range b.N {
		var rss []int
		for range 3 {
			cmd := exec.Command(bin, "-config", configDir(), "-bin-dir", binDir, "-addr", "127.0.0.1:0", "-data-dir", b.TempDir())
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			time.Sleep(3 * time.Second)
			kb, err := loadgen.ResidentKiB(cmd.Process.Pid)
			_ = cmd.Process.Signal(os.Interrupt)
			_ = cmd.Wait()
			if err != nil {
				b.Fatal(err)
			}
			rss = append(rss, kb)
		}
		slices.Sort(rss)
		b.ReportMetric(float64(rss[1])/1024, "MiB-idle-rss")
		fmt.Printf("idle runner (embedded NATS, every function at zero): median RSS %.1f MiB over 3 starts\n", float64(rss[1])/1024)
	}
}
