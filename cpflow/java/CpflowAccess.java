// Sync the local broker's SCRAM users and ACLs with cpflow's principals, in one JVM.
//
// Run as a single-file source program (Java 11+) on the Kafka jars' class path:
//   java -cp 'libs/*' CpflowAccess.java admin.properties < spec
// admin.properties configures an Admin client as the broker's super user. Each line of the spec is
//   user <name> <password>                                   a SCRAM-SHA-512 user (created or updated)
//   acl <user> <operation> <TOPIC|GROUP> <LITERAL|PREFIXED> <name>   an ALLOW binding
// ACLs of users named in the spec that the spec does not list are deleted, so a principal has
// exactly the bindings the spec gives it (least privilege survives a change of the table).
import java.io.BufferedReader;
import java.io.FileInputStream;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.ScramCredentialInfo;
import org.apache.kafka.clients.admin.ScramMechanism;
import org.apache.kafka.clients.admin.UserScramCredentialAlteration;
import org.apache.kafka.clients.admin.UserScramCredentialUpsertion;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclBindingFilter;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class CpflowAccess {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        try (FileInputStream in = new FileInputStream(args[0])) {
            props.load(in);
        }
        List<UserScramCredentialAlteration> users = new ArrayList<>();
        Set<String> principals = new HashSet<>();
        Set<AclBinding> wanted = new HashSet<>();
        BufferedReader reader = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = reader.readLine()) != null) {
            String[] f = line.trim().split("\\s+");
            if (f.length == 0 || f[0].isEmpty()) {
                continue;
            }
            if (f[0].equals("user") && f.length == 3) {
                users.add(new UserScramCredentialUpsertion(
                    f[1], new ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), f[2]));
                principals.add("User:" + f[1]);
            } else if (f[0].equals("acl") && f.length == 6) {
                wanted.add(new AclBinding(
                    new ResourcePattern(ResourceType.fromString(f[3]), f[5], PatternType.fromString(f[4])),
                    new AccessControlEntry("User:" + f[1], "*", AclOperation.fromString(f[2]), AclPermissionType.ALLOW)));
                principals.add("User:" + f[1]);
            } else {
                throw new IllegalArgumentException("bad spec line: " + line);
            }
        }
        try (Admin admin = Admin.create(props)) {
            if (!users.isEmpty()) {
                admin.alterUserScramCredentials(users).all().get(60, TimeUnit.SECONDS);
            }
            List<AclBinding> stale = new ArrayList<>();
            for (AclBinding binding : admin.describeAcls(AclBindingFilter.ANY).values().get(60, TimeUnit.SECONDS)) {
                if (principals.contains(binding.entry().principal()) && !wanted.contains(binding)) {
                    stale.add(binding);
                }
            }
            if (!stale.isEmpty()) {
                List<AclBindingFilter> filters = new ArrayList<>();
                for (AclBinding binding : stale) {
                    filters.add(binding.toFilter());
                }
                admin.deleteAcls(filters).all().get(60, TimeUnit.SECONDS);
            }
            admin.createAcls(new ArrayList<>(wanted)).all().get(60, TimeUnit.SECONDS);
            System.out.println("users " + users.size() + " acls " + wanted.size() + " removed " + stale.size());
        }
    }
}
