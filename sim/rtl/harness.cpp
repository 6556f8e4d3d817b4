// Verilator harness for flightllm_top: AXI4 memory model in C++ over a host buffer (zero-copy with numpy),
// AXI4-Lite CSR access, run-until-irq. Built as a shared library and driven from sim/rtl_device.py (ctypes).
// Fault injection (fl_faults, off by default): seeded random AXI backpressure (ARREADY/AWREADY/WREADY low, RVALID/
// BVALID gaps), random extra latency per burst, and an SLVERR/DECERR response on the k-th read or write burst.
// Rate: the memory serves at most one R beat and accepts at most one W beat every `period` cycles (fl_new; the
// board's port_bytes / bytes per cycle, Board.beat_period: 2 on PYNQ-Z2's 16-byte port behind a 64-bit HP port),
// each channel on its own as AXI's are; a read's first beat still comes after the latency, a write's B response
// the latency after its last W beat.
// Weight channels (boards: accel.weight_channels = C > 1): the masters m1_axi .. m{C-1}_axi are read-only ports on
// the same memory, each with its own queue, latency and rate; fl_ports.h, written by sim/rtl_device.py for the
// board, lists them. Fault injection covers them too (ARREADY low, RVALID gaps and extra latency at the same
// rates, drawn after m_axi's in each cycle, so a one-master board draws as before); the injected read error goes
// to one master's k-th read burst (err_port: 0 m_axi, c m{c}_axi).
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <vector>
#include "Vflightllm_top.h"
#include "verilated.h"
#ifdef FL_TRACE
#include "verilated_fst_c.h"
#endif

#ifndef FL_PORT_BYTES
#define FL_PORT_BYTES 64
#endif
static const int PB = FL_PORT_BYTES;
static const int PW = PB / 4;

struct Burst { uint64_t addr; uint32_t beats; uint64_t ready_at; int resp = 0; };

// a read-only AXI4 master of a weight channel: pointers into the model's port variables
struct RdPort {
  CData* arvalid; CData* arready; QData* araddr; CData* arlen; CData* rvalid; CData* rready; EData* rdata;
  CData* rresp; CData* rlast;
  std::deque<Burst> rq; uint32_t rbeat = 0; uint64_t r_next = 0; bool rv = false, ar = false, r = false;
  uint64_t a_addr = 0; uint32_t a_len = 0;
  uint64_t n_rd = 0;                    // read bursts accepted since fl_faults
};
#define FL_RDPORT(t, p) RdPort{&t->p##_arvalid, &t->p##_arready, &t->p##_araddr, &t->p##_arlen, &t->p##_rvalid, \
                               &t->p##_rready, &t->p##_rdata[0], &t->p##_rresp, &t->p##_rlast}
#include "fl_ports.h"

struct Faults {
  uint64_t rng = 0;                     // splitmix64 state; the random draws are made only when seeded
  uint32_t p_ar = 0, p_aw = 0, p_w = 0, p_r = 0, p_b = 0;   // per-cycle probability of a stall, in 1/65536
  uint32_t max_lat = 0;                 // extra latency per burst, uniform in [0, max_lat]
  int64_t err_rd = -1, err_wr = -1;     // 0-based index of the read / write burst answered with err_resp
  int err_port = 0;                     // the master whose read burst err_rd counts (0: m_axi)
  int err_resp = 2;                     // 2 SLVERR, 3 DECERR
  uint64_t n_rd = 0, n_wr = 0;          // bursts accepted since fl_faults
  uint64_t next() {
    uint64_t z = (rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull; z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  bool stall(uint32_t p) { return p && (uint32_t)(next() & 0xFFFF) < p; }
  uint32_t extra() { return max_lat ? (uint32_t)(next() % (max_lat + 1)) : 0; }
};

struct Harness {
  std::unique_ptr<VerilatedContext> ctx;
  std::unique_ptr<Vflightllm_top> top;
  uint8_t* mem; uint64_t size; uint32_t latency; uint32_t period = 1;
  uint64_t cyc = 0;
  uint64_t r_next = 0, w_next = 0;           // the first cycle the next R beat may be valid / W beat accepted
  std::deque<Burst> rq;  uint32_t rbeat = 0;
  std::deque<Burst> wq;  uint32_t wbeat = 0;
  std::deque<std::pair<uint64_t, int>> bq;   // ready_at, resp
  bool werr = false;
  std::vector<RdPort> xp;                    // weight channels 1 .. C-1
  Faults f;
#ifdef FL_TRACE
  std::unique_ptr<VerilatedFstC> tfp;
#endif
  void dump() {
#ifdef FL_TRACE
    if (tfp) tfp->dump(ctx->time());
#endif
    ctx->timeInc(1);
  }
  // one clock cycle: settle inputs from the model, sample handshakes, posedge, update the model
  void cycle() {
    auto* t = top.get();
    t->clk = 0;
    // R channel
    bool rv = false;
    if (!rq.empty() && rq.front().ready_at <= cyc && cyc >= r_next && !f.stall(f.p_r)) {
      Burst& b = rq.front();
      uint64_t a = b.addr + (uint64_t)rbeat * PB;
      rv = true;
      if (b.resp) {
        for (int i = 0; i < PW; i++) t->m_axi_rdata[i] = 0;
        t->m_axi_rresp = b.resp;
      } else if (a + PB <= size) {
        for (int i = 0; i < PW; i++) { uint32_t w; memcpy(&w, mem + a + 4 * i, 4); t->m_axi_rdata[i] = w; }
        t->m_axi_rresp = 0;
      } else {
        for (int i = 0; i < PW; i++) t->m_axi_rdata[i] = 0;
        t->m_axi_rresp = 3;
      }
      t->m_axi_rlast = (rbeat + 1 == b.beats);
    }
    t->m_axi_rvalid = rv;
    t->m_axi_arready = !f.stall(f.p_ar);
    t->m_axi_awready = !f.stall(f.p_aw);
    bool wrdy = !wq.empty() && cyc >= w_next && !f.stall(f.p_w);
    t->m_axi_wready = wrdy;
    bool bv = !bq.empty() && bq.front().first <= cyc && !f.stall(f.p_b);
    t->m_axi_bvalid = bv;
    t->m_axi_bresp = bv ? bq.front().second : 0;
    for (auto& x : xp) {
      x.rv = !x.rq.empty() && x.rq.front().ready_at <= cyc && cyc >= x.r_next && !f.stall(f.p_r);
      if (x.rv) {
        const Burst& b = x.rq.front();
        uint64_t a = b.addr + (uint64_t)x.rbeat * PB;
        bool ok = !b.resp && a + PB <= size;
        for (int i = 0; i < PW; i++) { uint32_t w = 0; if (ok) memcpy(&w, mem + a + 4 * i, 4); x.rdata[i] = w; }
        *x.rresp = b.resp ? b.resp : ok ? 0 : 3;
        *x.rlast = (x.rbeat + 1 == b.beats);
      }
      *x.rvalid = x.rv;
      *x.arready = !f.stall(f.p_ar);
    }
    t->eval(); dump();
    bool ar = t->m_axi_arvalid && t->m_axi_arready, r = rv && t->m_axi_rready;
    bool aw = t->m_axi_awvalid && t->m_axi_awready;
    bool w = t->m_axi_wvalid && wrdy, bb = bv && t->m_axi_bready;
    uint64_t araddr = t->m_axi_araddr, awaddr = t->m_axi_awaddr;
    uint32_t arlen = t->m_axi_arlen, awlen = t->m_axi_awlen;
    for (auto& x : xp) {
      x.ar = *x.arvalid && *x.arready; x.r = x.rv && *x.rready; x.a_addr = *x.araddr; x.a_len = *x.arlen;
    }
    if (w) {
      Burst& b = wq.front();
      uint64_t a = b.addr + (uint64_t)wbeat * PB;
      uint64_t strb = t->m_axi_wstrb;
      if (b.resp) {
        if (strb) werr = true;            // an injected error: the slave refuses the burst, nothing is written
      } else if (a + PB <= size) {
        for (int i = 0; i < PW; i++) {
          uint32_t d = t->m_axi_wdata[i];
          for (int j = 0; j < 4; j++) if ((strb >> (4 * i + j)) & 1) mem[a + 4 * i + j] = (d >> (8 * j)) & 0xff;
        }
      } else if (strb) werr = true;
    }
    t->clk = 1; t->eval(); dump();
    if (r) r_next = cyc + period;
    if (w) w_next = cyc + period;
    cyc++;
    if (ar) rq.push_back({araddr, arlen + 1, cyc + latency - 1 + f.extra(),
                          (int64_t)f.n_rd++ == f.err_rd && f.err_port == 0 ? f.err_resp : 0});
    if (r) { if (++rbeat == rq.front().beats) { rq.pop_front(); rbeat = 0; } }
    if (aw) wq.push_back({awaddr, awlen + 1, 0, (int64_t)f.n_wr++ == f.err_wr ? f.err_resp : 0});
    // the write response comes after the memory latency, as a read's first beat does
    if (w) {
      if (++wbeat == wq.front().beats) {
        int resp = wq.front().resp ? wq.front().resp : (werr ? 3 : 0);
        bq.push_back({cyc + latency - 1 + f.extra(), resp}); werr = false; wq.pop_front(); wbeat = 0;
      }
    }
    if (bb) bq.pop_front();
    for (size_t c = 0; c < xp.size(); c++) {
      auto& x = xp[c];
      if (x.r) x.r_next = cyc - 1 + period;
      if (x.ar) x.rq.push_back({x.a_addr, x.a_len + 1, cyc + latency - 1 + f.extra(),
                                (int64_t)x.n_rd++ == f.err_rd && f.err_port == (int)c + 1 ? f.err_resp : 0});
      if (x.r) { if (++x.rbeat == x.rq.front().beats) { x.rq.pop_front(); x.rbeat = 0; } }
    }
  }
};

extern "C" {
void* fl_new(uint8_t* mem, uint64_t size, uint32_t latency, uint32_t period, const char* fst) {
  auto* h = new Harness();
  h->ctx = std::make_unique<VerilatedContext>();
  h->top = std::make_unique<Vflightllm_top>(h->ctx.get());
  h->mem = mem; h->size = size; h->latency = latency ? latency : 1;
  fl_extra_ports(h->top.get(), h->xp);
  h->period = period ? period : 1;
#ifdef FL_TRACE
  if (fst && fst[0]) {
    h->ctx->traceEverOn(true);
    h->tfp = std::make_unique<VerilatedFstC>();
    h->top->trace(h->tfp.get(), 99);
    h->tfp->open(fst);
  }
#else
  (void)fst;
#endif
  // the model has no rst port: its registers start at their reset values (hw/top.py, target "sim")
  for (int i = 0; i < 4; i++) h->cycle();
  return h;
}
void fl_set_mem(void* p, uint8_t* mem, uint64_t size) { auto* h = (Harness*)p; h->mem = mem; h->size = size; }
void fl_free(void* p) {
  auto* h = (Harness*)p;
#ifdef FL_TRACE
  if (h->tfp) h->tfp->close();
#endif
  h->top->final();
  delete h;
}
void fl_csr_write(void* p, uint32_t addr, uint32_t val) {
  auto* h = (Harness*)p; auto* t = h->top.get();
  t->s_axil_awvalid = 1; t->s_axil_wvalid = 1; t->s_axil_awaddr = addr; t->s_axil_wdata = val; t->s_axil_wstrb = 0xf;
  t->s_axil_bready = 1;
  for (int i = 0; i < 16; i++) { t->clk = 0; t->eval(); bool go = t->s_axil_awready; h->cycle(); if (go) break; }
  t->s_axil_awvalid = 0; t->s_axil_wvalid = 0;
  for (int i = 0; i < 16 && !t->s_axil_bvalid; i++) h->cycle();
  h->cycle();
}
uint32_t fl_csr_read(void* p, uint32_t addr) {
  auto* h = (Harness*)p; auto* t = h->top.get();
  t->s_axil_arvalid = 1; t->s_axil_araddr = addr; t->s_axil_rready = 0;
  for (int i = 0; i < 16; i++) { t->clk = 0; t->eval(); bool go = t->s_axil_arready; h->cycle(); if (go) break; }
  t->s_axil_arvalid = 0;
  for (int i = 0; i < 16 && !t->s_axil_rvalid; i++) h->cycle();
  uint32_t v = t->s_axil_rdata;
  t->s_axil_rready = 1; h->cycle(); t->s_axil_rready = 0;
  return v;
}
// run until irq (done or error) or max_cycles; returns the cycles run
uint64_t fl_run(void* p, uint64_t max_cycles) {
  auto* h = (Harness*)p;
  uint64_t c0 = h->cyc;
  while (h->cyc - c0 < max_cycles) { h->cycle(); if (h->top->irq) break; }
  return h->cyc - c0;
}
// the interconnect forgets outstanding bursts (before a START, and with a soft reset: see docs/reliability.md)
void fl_drain(void* p) {
  auto* h = (Harness*)p;
  h->rq.clear(); h->rbeat = 0; h->wq.clear(); h->wbeat = 0; h->bq.clear(); h->werr = false;
  h->r_next = h->w_next = 0;
  for (auto& x : h->xp) { x.rq.clear(); x.rbeat = 0; x.r_next = 0; }
}
// fault injection; seed 0 with every probability 0 and k < 0 turns it off. Counters restart at each call.
void fl_faults(void* p, uint64_t seed, uint32_t p_ar, uint32_t p_aw, uint32_t p_w, uint32_t p_r, uint32_t p_b,
               uint32_t max_lat, int64_t err_rd, int64_t err_wr, int err_resp, int err_port) {
  auto* h = (Harness*)p;
  Faults f;
  f.rng = seed; f.p_ar = p_ar; f.p_aw = p_aw; f.p_w = p_w; f.p_r = p_r; f.p_b = p_b; f.max_lat = max_lat;
  f.err_rd = err_rd; f.err_wr = err_wr; f.err_resp = err_resp; f.err_port = err_port;
  h->f = f;
  for (auto& x : h->xp) x.n_rd = 0;
}
// read and write bursts accepted since the last fl_faults: m_axi's, then each weight channel's reads
void fl_bursts(void* p, uint64_t* out) {
  auto* h = (Harness*)p; out[0] = h->f.n_rd; out[1] = h->f.n_wr;
  for (size_t c = 0; c < h->xp.size(); c++) out[2 + c] = h->xp[c].n_rd;
}
}
