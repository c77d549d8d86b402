/* net_test_util.h - what the Criterion suites of tests/net/ share beyond
 * test_util.h; they alone link net/, so this is apart from test_util_cr.c. */
#pragma once

#include "conn.h"
#include "proto.h"

/* Receives the next message on c (within timeout_ms) and fails the running
 * test unless it is a well-formed ERROR. *ret points into c's receive
 * buffer: valid until the next receive on c. */
void tu_must_recv_error(struct net_conn *c, int timeout_ms, struct net_error_msg *ret);
