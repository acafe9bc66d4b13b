// A gRPC-web client the edge's tests run with Node: connect-node's createGrpcWebTransport over
// the code protoc-gen-es generates, as a browser page would use connect-web. One command per run
// (argv: command, then a JSON object of arguments); each result is one JSON line on stdout.
//
// Bundled by tests/integration/test_edge_clients.py with esbuild (@gen: edge/web/gen, @rpc: the
// google.rpc error details generated for the test).

import { toJson } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-node";

import { Role } from "@gen/delivery/common/v1/common_pb";
import { LocationService } from "@gen/delivery/location/v1/location_service_pb";
import { AccountService } from "@gen/delivery/order/v1/account_service_pb";
import { TrackOrderResponseSchema, TrackingService } from "@gen/delivery/tracking/v1/tracking_service_pb";
import { BadRequestSchema, ErrorInfoSchema } from "@rpc/google/rpc/error_details_pb";

interface Args {
  baseUrl: string;
  binary: boolean;
  email?: string;
  token?: string;
  orderId?: string;
}

function emit(value: unknown): void {
  process.stdout.write(JSON.stringify(value) + "\n");
}

function failure(err: unknown): Record<string, unknown> {
  const error = ConnectError.from(err);
  return {
    code: Code[error.code],
    message: error.rawMessage,
    reasons: error.findDetails(ErrorInfoSchema).map((info) => info.reason),
    violations: error.findDetails(BadRequestSchema).flatMap((bad) =>
      bad.fieldViolations.map((v) => ({ field: v.field, description: v.description })),
    ),
  };
}

async function main(): Promise<void> {
  const [command, raw] = process.argv.slice(2);
  const args = JSON.parse(raw) as Args;
  const transport = createGrpcWebTransport({
    baseUrl: args.baseUrl,
    httpVersion: "1.1",
    useBinaryFormat: args.binary,
  });
  const headers = args.token ? { authorization: `Bearer ${args.token}` } : undefined;
  switch (command) {
    case "unary": {
      // Sign up, then ask who we are with the session the sign-up opened.
      const accounts = createClient(AccountService, transport);
      const signed = await accounts.signUp({
        requestId: crypto.randomUUID(),
        email: args.email ?? "",
        password: "password123",
        name: "Node",
        role: Role.CUSTOMER,
      });
      let contentType: string | null = null;
      const me = await accounts.getMe(
        {},
        {
          headers: { authorization: `Bearer ${signed.sessionToken}` },
          onHeader: (header) => {
            contentType = header.get("content-type");
          },
        },
      );
      emit({
        userId: signed.user?.userId,
        email: signed.user?.email,
        role: Role[signed.user?.role ?? 0],
        tokenLength: signed.sessionToken.length,
        meUserId: me.user?.userId,
        meEmail: me.user?.email,
        // Which codec really travelled: the edge answers in the request's.
        contentType,
      });
      break;
    }
    case "bad": {
      // A sign-up the service refuses field by field; the BadRequest detail says which.
      const accounts = createClient(AccountService, transport);
      try {
        await accounts.signUp({ email: "not an email", password: "password123", name: "X" });
        emit({ code: "OK" });
      } catch (err) {
        emit(failure(err));
      }
      break;
    }
    case "internal": {
      // A service-to-service RPC: the edge must not forward it.
      const location = createClient(LocationService, transport);
      try {
        await location.findNearbyDrivers(
          { center: { latitude: 60.17, longitude: 24.94 }, radiusMeters: 1000 },
          { headers },
        );
        emit({ code: "OK" });
      } catch (err) {
        emit(failure(err));
      }
      break;
    }
    case "track": {
      // Every update of one order's TrackOrder stream, one line each, then how it ended.
      const tracking = createClient(TrackingService, transport);
      try {
        for await (const update of tracking.trackOrder({ orderId: args.orderId ?? "" }, { headers })) {
          emit({ update: toJson(TrackOrderResponseSchema, update) });
        }
        emit({ end: "OK" });
      } catch (err) {
        emit({ end: failure(err) });
      }
      break;
    }
    default:
      throw new Error(`unknown command ${command}`);
  }
}

main().catch((err) => {
  process.stderr.write(`${String(err)}\n`);
  process.exit(1);
});
