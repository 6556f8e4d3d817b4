// Verilator harness for flightllm_top: AXI4 memory model in C++ over a host buffer (zero-copy with numpy),
// AXI4-Lite CSR access, run-until-irq. Built as a shared library and driven from sim/rtl_device.py (ctypes).
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
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

struct Burst { uint64_t addr; uint32_t beats; uint64_t ready_at; };

struct Harness {
  std::unique_ptr<VerilatedContext> ctx;
  std::unique_ptr<Vflightllm_top> top;
  uint8_t* mem; uint64_t size; uint32_t latency;
  uint64_t cyc = 0;
  std::deque<Burst> rq;  uint32_t rbeat = 0;
  std::deque<Burst> wq;  uint32_t wbeat = 0;
  std::deque<std::pair<uint64_t, int>> bq;   // ready_at, resp
  bool werr = false;
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
    if (!rq.empty() && rq.front().ready_at <= cyc) {
      Burst& b = rq.front();
      uint64_t a = b.addr + (uint64_t)rbeat * PB;
      rv = true;
      if (a + PB <= size) {
        for (int i = 0; i < PW; i++) { uint32_t w; memcpy(&w, mem + a + 4 * i, 4); t->m_axi_rdata[i] = w; }
        t->m_axi_rresp = 0;
      } else {
        for (int i = 0; i < PW; i++) t->m_axi_rdata[i] = 0;
        t->m_axi_rresp = 3;
      }
      t->m_axi_rlast = (rbeat + 1 == b.beats);
    }
    t->m_axi_rvalid = rv;
    t->m_axi_arready = 1;
    t->m_axi_awready = 1;
    t->m_axi_wready = !wq.empty();
    bool bv = !bq.empty() && bq.front().first <= cyc;
    t->m_axi_bvalid = bv;
    t->m_axi_bresp = bv ? bq.front().second : 0;
    t->eval(); dump();
    bool ar = t->m_axi_arvalid, r = rv && t->m_axi_rready, aw = t->m_axi_awvalid;
    bool w = t->m_axi_wvalid && !wq.empty(), bb = bv && t->m_axi_bready;
    uint64_t araddr = t->m_axi_araddr, awaddr = t->m_axi_awaddr;
    uint32_t arlen = t->m_axi_arlen, awlen = t->m_axi_awlen;
    if (w) {
      Burst& b = wq.front();
      uint64_t a = b.addr + (uint64_t)wbeat * PB;
      uint64_t strb = t->m_axi_wstrb;
      if (a + PB <= size) {
        for (int i = 0; i < PW; i++) {
          uint32_t d = t->m_axi_wdata[i];
          for (int j = 0; j < 4; j++) if ((strb >> (4 * i + j)) & 1) mem[a + 4 * i + j] = (d >> (8 * j)) & 0xff;
        }
      } else if (strb) werr = true;
    }
    t->clk = 1; t->eval(); dump();
    cyc++;
    if (ar) rq.push_back({araddr, arlen + 1, cyc + latency - 1});
    if (r) { if (++rbeat == rq.front().beats) { rq.pop_front(); rbeat = 0; } }
    if (aw) wq.push_back({awaddr, awlen + 1, 0});
    // the write response comes after the memory latency, as a read's first beat does
    if (w) { if (++wbeat == wq.front().beats) { bq.push_back({cyc + latency - 1, werr ? 3 : 0}); werr = false; wq.pop_front(); wbeat = 0; } }
    if (bb) bq.pop_front();
  }
};

extern "C" {
void* fl_new(uint8_t* mem, uint64_t size, uint32_t latency, const char* fst) {
  auto* h = new Harness();
  h->ctx = std::make_unique<VerilatedContext>();
  h->top = std::make_unique<Vflightllm_top>(h->ctx.get());
  h->mem = mem; h->size = size; h->latency = latency ? latency : 1;
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
  h->top->rst = 1;
  for (int i = 0; i < 4; i++) h->cycle();
  h->top->rst = 0;
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
void fl_drain(void* p) { auto* h = (Harness*)p; h->rq.clear(); h->rbeat = 0; }
}
