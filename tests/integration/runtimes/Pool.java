// Apache HttpClient with a pooling manager: connections go back to the pool idle.
import org.apache.http.client.methods.CloseableHttpResponse;
import org.apache.http.client.methods.HttpGet;
import org.apache.http.impl.client.CloseableHttpClient;
import org.apache.http.impl.client.HttpClients;
import org.apache.http.impl.conn.PoolingHttpClientConnectionManager;
import org.apache.http.util.EntityUtils;

public class Pool {
    public static void main(String[] args) throws Exception {
        PoolingHttpClientConnectionManager cm = new PoolingHttpClientConnectionManager();
        CloseableHttpClient client = HttpClients.custom().setConnectionManager(cm).build();
        Thread[] ts = new Thread[4];
        for (int i = 0; i < ts.length; i++) {
            ts[i] = new Thread(() -> {
                try (CloseableHttpResponse r = client.execute(new HttpGet(args[0]))) {
                    EntityUtils.consume(r.getEntity());  // back to the pool, idle
                } catch (Exception e) { e.printStackTrace(); }
            });
            ts[i].start();
        }
        for (Thread t : ts) t.join();
        System.out.println("ready");
        Thread.sleep(3600_000);
    }
}
