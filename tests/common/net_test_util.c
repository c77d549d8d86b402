#include "common/net_test_util.h"

#include <criterion/criterion.h>

void tu_must_recv_error(struct net_conn *c, int timeout_ms, struct net_error_msg *ret)
{
    ifd_error err;
    uint16_t type;
    const uint8_t *p;
    size_t len;
    cr_assert_eq(net_conn_recv(c, &type, &p, &len, timeout_ms, &err), 0, "%s", err.msg);
    cr_assert_eq(type, NET_MSG_ERROR, "expected ERROR, got %s", net_msg_name(type));
    cr_assert_eq(net_error_decode(p, len, ret, &err), 0, "%s", err.msg);
}
